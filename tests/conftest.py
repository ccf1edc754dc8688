"""Integration fixtures: real sshd hosts on loopback, supervisord-managed gunicorn behind
real nginx, a git repo of the sample app with several versions, and the real `fab` CLI."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fabfile.inventory import load_inventory
from fabfile.layout import Layout
from fabfile.managers.gunicorn import gunicorn_argv

from .pg import PostgreSQL
from .services import Nginx, Sshd, Supervisord, free_port, make_ssh_keys

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "flaskapp"
FAB = [sys.executable, str(REPO / "launch.py"), "fab"]  # as ./fab runs it
INV = [sys.executable, str(REPO / "launch.py"), "inv"]  # as ./inv runs it


def inv_health(inventory: Path, cwd: Path, *target: str, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real `inv health [TARGET]` on `inventory`, run from `cwd` (`env`: the test process's by default)."""
    return subprocess.run([*INV, "-r", str(REPO), "health", *target], capture_output=True,
                          text=True, env={**(os.environ if env is None else env), "SHIPFAB_HOSTS": str(inventory)},
                          cwd=cwd, stdin=subprocess.DEVNULL, timeout=timeout)


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """Wheels for the sample app, fetched once per session: venv builds then run offline."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(wheels),
                    "-r", str(SAMPLE / "requirements.txt")], check=True)
    return wheels


# After 0003 committed, 0004 changes rows and fails: the schema is half-migrated.
MIGRATION_0004 = '''"""A migration that fails half-way, after 0003 committed."""
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade():
    op.execute("UPDATE items SET price = 0")
    raise RuntimeError("0004 failed half-way: prices cannot be zero")
'''


def migrations_repo(repo: Path, later: dict[str, dict[str, str]]) -> Path:
    """The sample app with its alembic migrations as git tags: v1 (0001), v2 (+0002: price), then
    each tag of `later` adding its files to migrations/versions/."""
    shutil.copytree(SAMPLE, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "data"))
    versions = repo / "migrations" / "versions"
    price = (versions / "0002_price.py").read_text()
    git(repo, "init", "-q", "-b", "main")

    def commit(tag: str) -> None:
        (repo / "VERSION").write_text(tag + "\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", tag)
        git(repo, "tag", tag)

    (versions / "0002_price.py").unlink()
    commit("v1")
    (versions / "0002_price.py").write_text(price)
    commit("v2")
    for tag, files in later.items():
        for name, text in files.items():
            (versions / name).write_text(text)
        commit(tag)
    return repo


@pytest.fixture(scope="session")
def app_repo(tmp_path_factory) -> Path:
    """A git repo of the sample app with tags v1, v2, broken (unhealthy) and v3 (new requirements)."""
    repo = tmp_path_factory.mktemp("apprepo")
    git(repo, "init", "-q", "-b", "main")
    for name in ("app.py", "requirements.txt"):
        shutil.copy(SAMPLE / name, repo / name)

    def commit(tag: str, version: str, healthy: str = "1") -> None:
        (repo / "VERSION").write_text(version + "\n")
        (repo / "HEALTHY").write_text(healthy + "\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", tag)
        git(repo, "tag", tag)

    commit("v1", "v1")
    commit("v2", "v2")
    commit("broken", "broken", healthy="0")
    git(repo, "checkout", "-q", "v2")
    git(repo, "checkout", "-q", "-b", "tmp")
    with open(repo / "requirements.txt", "a") as fh:
        fh.write("# v3: requirements changed, so the venv hash changes\n")
    commit("v3", "v3")
    git(repo, "checkout", "-q", "main")
    return repo


@dataclass
class Host:
    name: str
    sshd: Sshd
    deploy_to: Path
    port: int  # gunicorn bind port
    manager: str
    nginx: Nginx | None = None
    supervisord: Supervisord | None = None
    health_via: str = "controller"

    @property
    def layout(self) -> Layout:
        return Layout(str(self.deploy_to))

    def current(self) -> str:
        link = self.deploy_to / "current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else ""

    def releases(self) -> list[str]:
        d = self.deploy_to / "releases"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def log(self) -> list[dict]:
        path = self.deploy_to / ".shipfab" / "releases.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def lock_held(self) -> bool:
        return (self.deploy_to / ".shipfab" / "lock").exists()

    def health(self) -> dict:
        import requests

        return requests.get(f"http://127.0.0.1:{self.port}/health", timeout=5).json()


@dataclass
class World:
    """A temporary fleet: sshd hosts, their apps, hosts.toml, and a runner for the real CLI."""

    tmp: Path
    wheelhouse: Path
    repo: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    extra_app: dict = field(default_factory=dict)
    extra_toml: str = ""  # appended to [apps.sample] (e.g. preflight / notify tables)
    cli: list[str] = field(default_factory=lambda: [*FAB, "-r", str(REPO)])  # the benches use ./fab itself

    def __post_init__(self) -> None:
        self.keys = make_ssh_keys(self.tmp / "keys")
        self.inventory = self.tmp / "hosts.toml"

    def add_host(self, name: str, manager: str = "supervisor", nginx: bool = False) -> Host:
        sshd = Sshd.start(self.tmp / f"sshd-{name}", self.keys)
        host = Host(name, sshd, self.tmp / name / "srv", free_port(), manager)
        self.hosts[name] = host
        self.write()
        if manager == "supervisor":
            target = load_inventory(self.inventory).targets[name]
            command = shlex.join(gunicorn_argv(target.app, host.layout))
            host.supervisord = Supervisord.start(self.tmp / f"supervisor-{name}", {"app": {"command": command}})
            self.write()
        if nginx:
            host.nginx = Nginx.start(self.tmp / f"nginx-{name}", f"127.0.0.1:{host.port}")
        return host

    def write(self) -> None:
        known = "\n".join(h.sshd.known_hosts.read_text().strip() for h in self.hosts.values())
        (self.tmp / "known_hosts").write_text(known + "\n")
        lines = [
            "[defaults]",
            f'known_hosts = "{self.tmp / "known_hosts"}"',
            f'key_filename = "{self.keys.client_key}"',
            "[apps.sample]",
            'stack = "gunicorn"',
            'deploy_to = "/unused"',
            f'checkout = "{self.repo}"',
            'branch = "v1"',
            f'wheelhouse = "{self.wheelhouse}"',
            "keep_releases = 3",
            *[f"{k} = {json.dumps(v)}" for k, v in self.extra_app.items()],
            self.extra_toml,
            "[apps.sample.health]",
            'url = "http://127.0.0.1:0/health"',
            'json = { status = "ok" }',
            "timeout = 15",
        ]
        for h in self.hosts.values():
            gun = {"manager": h.manager, "bind": f"127.0.0.1:{h.port}", "workers": 2, "program": "app",
                   "restart_timeout": 30}
            if h.supervisord:
                gun["supervisor_conf"] = str(h.supervisord.conf)
            lines += [
                f"[hosts.{h.name}]",
                f'hostname = "{h.sshd.hostname}"',
                f"port = {h.sshd.port}",
                f'user = "{h.sshd.user}"',
                f"[hosts.{h.name}.overrides]",
                f'deploy_to = "{h.deploy_to}"',
                f"gunicorn = {_inline(gun)}",
                f'health = {{ url = "http://127.0.0.1:{h.port}/health", via = "{h.health_via}" }}',
            ]
        lines.append("[groups]")
        lines += [f"{g} = {json.dumps(m)}" for g, m in self.groups.items()]
        self.inventory.write_text("\n".join(lines) + "\n")

    def fab(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run the real `fab` CLI on this world's hosts.toml, from its dir (so its .env is the local one)."""
        env = {**os.environ, "SHIPFAB_HOSTS": str(self.inventory)}
        return subprocess.run([*self.cli, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.tmp)

    def popen_fab(self, *args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "SHIPFAB_HOSTS": str(self.inventory)}
        return subprocess.Popen([*self.cli, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, stdin=subprocess.DEVNULL, cwd=self.tmp)

    def stop(self) -> None:
        for h in self.hosts.values():
            for svc in (h.nginx, h.supervisord, h.sshd):
                if svc is not None:
                    svc.stop()
            _stop_pidfile_gunicorn(h)


def _inline(d: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


def pids_with(marker: str) -> list[int]:
    """Processes whose command line contains `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _stop_pidfile_gunicorn(host: Host) -> None:
    """gunicorn daemonized by the pidfile manager outlives sshd: stop every process run from the deploy dir."""
    import signal
    import time

    pids = pids_with(str(host.deploy_to))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(0.5)


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server (its own data dir and port) for the tests of one module."""
    server = PostgreSQL.start()
    yield server
    server.stop()


@pytest.fixture
def world(tmp_path, wheelhouse, app_repo):
    w = World(tmp_path, wheelhouse, app_repo)
    yield w
    w.stop()
