"""The worker stack (seeds/002): pure builders and parsers, then real deploys of the example
engine (examples/workerapp) to two real sshd hosts: one under a real supervisord, one with
the pidfile manager; a real PostgreSQL for the migrations (once per group); crontab files and,
in one test, the deploy user's real crontab through Debian's `crontab` command."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fabfile.errors import InventoryError
from fabfile.inventory import CronEntry, WorkerProcess, WorkerSettings, parse_inventory
from fabfile.layout import Layout
from fabfile.managers import workers
from fabfile.probes import command as probe
from fabfile.steps import cron
from fabfile.steps.launcher import LAUNCHER, launch_cmd, launch_stdin
from fabfile.steps.release_commands import summary

from .conftest import FAB, REPO, git, inv_health
from .pg import PostgreSQL
from .services import Sshd, Supervisord, make_ssh_keys

ENGINE = REPO / "examples" / "workerapp"
L = Layout("/srv/my etl")
HOSTILE = "$(touch /tmp/pwned) `id` \"q' ; %s 100%"


# ---------------------------------------------------------------- pure functions


def test_cron_block_replaced_in_place_and_removed_byte_for_byte():
    entries = [CronEntry("*/15 * * * *", "python -m engine.run --limit=100 >> logs/run.log 2>&1"),
               CronEntry("@daily", "date +%F")]
    block = cron.render_block("etl", L, entries)
    assert block.startswith("# shipfab:etl begin\n") and block.endswith("# shipfab:etl end\n")
    assert "*/15 * * * * cd '/srv/my etl/current' && PATH='/srv/my etl/current/.venv/bin':\"$PATH\" python -m" in block
    assert "date +\\%F" in block  # cron would turn a bare % into a newline
    user = "MAILTO=me\r\n# shipfab:etl begin\nold line\n# shipfab:etl end\n0 3 * * * backup # no newline"
    replaced = cron.replace_block(user, "etl", block)
    assert replaced == "MAILTO=me\r\n" + block + "0 3 * * * backup # no newline"
    assert cron.extract_block(replaced, "etl") == block
    back = cron.replace_block(replaced, "etl", "# shipfab:etl begin\nold line\n# shipfab:etl end\n")
    assert back == user
    other = "# shipfab:etl2 begin\nx\n# shipfab:etl2 end\n"  # another app's block is not ours
    assert cron.replace_block(other, "etl", block) == other + block
    assert cron.replace_block("no newline", "etl", block) == "no newline\n" + block
    assert cron.replace_block(other + block, "etl", "") == other
    assert cron.render_block("etl", L, []) == "" and cron.replace_block("a\n", "etl", "") == "a\n"
    assert cron.parse_read(cron.NO_CRONTAB + "\n") is None and cron.parse_read("") == ""
    assert cron.write_cmd("") == "crontab -" and "'/srv/my etl/crontab.shipfab-tmp'" in cron.write_cmd("/srv/my etl/crontab")


def test_health_parsing_and_thresholds():
    out = "Extraction health\nOverall Status: HEALTHY\nFailure rate: 2%\n"
    h = probe.evaluate(out, 0, "1000 500", "HEALTHY", 0.10, 10)
    assert h.ok and h.status_line == "Overall Status: HEALTHY" and h.failure_rate == 0.02
    assert h.disk_free_percent == 50.0 and h.figures() == "failure_rate 2.00%, disk free 50.0 %"
    assert not probe.evaluate("status: UNHEALTHY\n", 0, "", "HEALTHY", 0.1, 10).ok  # not the word HEALTHY
    assert probe.evaluate("status: DEGRADED\n", 0, "", "HEALTHY", 0.1, 10).problems == (
        "status line does not say HEALTHY: status: DEGRADED",)
    rate = probe.evaluate("status: HEALTHY\nfailure_rate: 0.25\n", 0, "100 50", "HEALTHY", 0.10, 10)
    assert not rate.ok and rate.healthy and rate.problems == ("failure rate 25.00% > 10%",)
    disk = probe.evaluate("status: HEALTHY\n", 0, "1000 50", "HEALTHY", 0.10, 10)
    assert disk.problems == ("disk free 5.0 % < 10 %",)
    assert "exited 3" in probe.evaluate("status: HEALTHY\n", 3, "", "HEALTHY", 0.1, 10).problems[0]
    assert probe.split_output(f"status: HEALTHY\n\n{probe.RC_MARK} 0\n{probe.DF_MARK} 10 5\n") == (
        "status: HEALTHY", 0, "10 5")
    assert probe.status_line("no status word\nsecond") == "no status word" and probe.disk_free_percent("x") is None


def test_command_builders_quote_hostile_values():
    cmd = launch_cmd("python3", "/srv/my etl/current", HOSTILE, ("/srv/p.pid", "/srv/l og"))
    argv = shlex.split(cmd)
    assert argv == ["python3", "-c", LAUNCHER, "/srv/my etl/current", HOSTILE, "/srv/p.pid", "/srv/l og"]
    line = launch_stdin({"SECRET": HOSTILE})
    assert HOSTILE not in cmd.replace(shlex.quote(HOSTILE), "") and line.endswith("\n") and "SECRET" not in cmd
    w = settings(processes=(WorkerProcess("etl-worker", "python -m engine.worker", 7),))
    stop = workers.stop_script(w, L)
    assert "j -lt 70" in stop and "kill -TERM -- -\"$pid\"" in stop and "'/srv/my etl/releases'" in stop
    sup = settings(manager="supervisor", supervisor_conf="/etc/s v.conf", processes=w.processes)
    assert "timeout 37 supervisorctl -c '/etc/s v.conf' stop etl-worker" in workers.stop_script(sup, L)
    assert workers.worker_argv(L, w.processes[0])[2] == (
        "cd '/srv/my etl/current' && PATH='/srv/my etl/current/.venv/bin':\"$PATH\" exec python -m engine.worker")
    pytest_out = ("x\n" * 30 + "===== short test summary info =====\nFAILED t.py::test_a - assert 1 == 2\n"
                  "===== 1 failed in 0.1s =====")
    assert summary(pytest_out).splitlines()[0].startswith("===== short test summary") and "1 failed" in summary(pytest_out)
    assert summary("a\nb\n") == "a\nb"


def settings(**kw) -> WorkerSettings:
    base = dict(gate=(), build=(), smoke=(), health_command="", health_expect="HEALTHY", health_timeout=60,
                processes=(), manager="pidfile", supervisor_conf="", sudo=False, cron=(), crontab="",
                max_failure_rate=0.1, min_disk_percent=10, command_timeout=60)
    return WorkerSettings(**{**base, **kw})


@pytest.mark.parametrize("worker, problem", [
    ({"cron": [{"schedule": "* * *", "command": "x"}]}, "cron[0].schedule: not a cron schedule"),
    ({"cron": [{"schedule": "@daily", "command": "a\nb"}]}, "cron[0].command: must be one non-empty line"),
    ({"processes": [{"name": "a b", "command": "x"}]}, "processes[0].name: must be a unique name"),
    ({"processes": [{"name": "a", "command": "x"}, {"name": "a", "command": "y"}]}, "processes[1].name"),
    ({"alerts": {"max_failure_rate": 2}}, "alerts.max_failure_rate: must be at least 0 and at most 1"),
    ({"health": {"expect": "OK NOW"}}, "health.expect: must be one word"),
    ({"manager": "cron"}, "manager: unknown value"),
    ({"stack": "gunicorn", "gate": ["x"]}, 'apps.etl.worker: only for stack "worker"'),
])
def test_worker_settings_are_validated(worker, problem):
    stack = worker.pop("stack", "worker")
    app = {"stack": stack, "deploy_to": "/srv/etl", "worker": worker, "health": {"url": "http://h/"}}
    data = {"apps": {"etl": app}}
    with pytest.raises(InventoryError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_inventory(data, Path("hosts.toml"))


def test_relative_crontab_is_under_deploy_to():
    data = {"apps": {"etl": {"stack": "worker", "deploy_to": "/srv/etl", "worker": {"crontab": "cron/tab"}}},
            "hosts": {"h": {"hostname": "h", "app": "etl"}}}
    assert parse_inventory(data, Path("hosts.toml")).targets["h"].app.worker.crontab == "/srv/etl/cron/tab"


# ---------------------------------------------------------------- the rig: two hosts, supervisord, PostgreSQL

PASSWORD = "Pw+s3cr3t/x!7q"
MIGRATE = ("psql -v ON_ERROR_STOP=1 -q -c 'CREATE TABLE IF NOT EXISTS migration_runs (id serial PRIMARY KEY, "
           "at timestamptz DEFAULT now()); INSERT INTO migration_runs DEFAULT VALUES'")
FAILING_TEST = "from engine.extract import extract\n\n\ndef test_broken():\n    assert extract('a  b') == 'a b'\n"
SMOKE_FAIL = "import sys\nprint('error: the dry run found 3 broken listings')\nsys.exit(2)\n"
DEGRADED = "print('status: DEGRADED')\nprint('failure_rate: 0.25')\n"


def engine_repo(repo: Path) -> Path:
    """The example engine with tags v1, v2 (good) and gatefail, smokefail, degraded (from v2)."""
    shutil.copytree(ENGINE, repo, ignore=shutil.ignore_patterns("__pycache__", "data", ".pytest_cache"))
    git(repo, "init", "-q", "-b", "main")

    def commit(tag: str) -> None:
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", tag)
        git(repo, "tag", tag)

    commit("v1")
    (repo / "VERSION").write_text("v2\n")
    commit("v2")
    for tag, path, text in (("gatefail", "engine/tests/test_broken.py", FAILING_TEST),
                            ("smokefail", "engine/run.py", SMOKE_FAIL), ("degraded", "engine/health.py", DEGRADED)):
        git(repo, "checkout", "-q", "-b", tag, "v2")
        (repo / path).write_text(text)
        commit(tag)
    git(repo, "checkout", "-q", "main")
    return repo


@dataclass
class WHost:
    name: str
    sshd: Sshd
    root: Path
    supervisord: Supervisord | None = None

    def current(self) -> str:
        link = self.root / "current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else ""

    def crontab(self) -> str:
        return (self.root / "crontab").read_text()

    def worker_pid(self) -> int:
        if self.supervisord is not None:
            return int(self.supervisord.ctl("pid", "etl-worker").stdout.strip() or 0)
        pidfile = self.root / "shared" / "worker-etl-worker.pid"
        return int(pidfile.read_text()) if pidfile.exists() else 0

    def worker_release(self) -> str:
        """The release the worker runs from (its working directory), "" when none runs."""
        pid = self.worker_pid()
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd")).name if pid else ""
        except OSError:
            return ""

    def jobs(self) -> list[str]:
        path = self.root / "shared" / "logs" / "worker-jobs.log"
        return path.read_text().splitlines() if path.exists() else []

    def log(self) -> list[dict]:
        import json

        path = self.root / ".shipfab" / "releases.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


class Rig:
    def __init__(self, tmp: Path, wheels: Path, repo: Path, pg: PostgreSQL) -> None:
        self.tmp, self.wheels, self.repo = tmp, wheels, repo
        self.keys = make_ssh_keys(tmp / "keys")
        self.inventory = tmp / "hosts.toml"
        self.url = pg.create_database("etl", "etl", PASSWORD)
        self.hosts: dict[str, WHost] = {}
        self.real_crontab_on = ""  # the host using the deploy user's real crontab (one test only)
        proc = WorkerProcess("etl-worker", "python -m engine.worker", 10)
        for name in ("a", "b"):
            root = tmp / name / "srv"
            host = WHost(name, Sshd.start(tmp / f"sshd-{name}", self.keys), root)
            if name == "a":  # a real supervisord runs the worker from current
                host.supervisord = Supervisord.start(tmp / "supervisor-a", {"etl-worker": {
                    "command": shlex.join(workers.worker_argv(Layout(str(root)), proc)),
                    "environment": {"JOB_SECONDS": "1.5"}, "stopwaitsecs": 20}})
            (root / "shared").mkdir(parents=True)
            env = root / "shared" / ".env"
            env.write_text(f"DATABASE_URL={self.url}\nJOB_SECONDS=1.5\nHOSTILE='{HOSTILE.replace(chr(39), '')}'\n"
                           f"TOUCH=$(touch {tmp}/pwned)\n")
            env.chmod(0o600)
            self.hosts[name] = host
        self.write()

    def write(self) -> None:
        known = "".join(h.sshd.known_hosts.read_text() for h in self.hosts.values())
        (self.tmp / "known_hosts").write_text(known)
        lines = [
            "[defaults]", f'known_hosts = "{self.tmp / "known_hosts"}"', f'key_filename = "{self.keys.client_key}"',
            "[apps.etl]", 'stack = "worker"', 'deploy_to = "/unused"', f'checkout = "{self.repo}"', 'branch = "v1"',
            f'wheelhouse = "{self.wheels}"', 'shared_dirs = ["logs", "data"]',
            "[apps.etl.worker]",
            'build = ["python -m engine.migrate"]',  # the engine's local queue (SQLite): its "generate" step
            'gate = ["python -m pytest -q -p no:cacheprovider engine/tests"]',
            'smoke = ["python -m engine.run --limit=10 --dry-run"]',
            'health = { command = "python -m engine.health", timeout = 30 }',
            'processes = [{ name = "etl-worker", command = "python -m engine.worker", stop_timeout = 10 }]',
            'cron = [{ schedule = "*/15 * * * *", command = "python -m engine.run --limit=100 >> logs/run.log 2>&1" },'
            ' { schedule = "@daily", command = "date +%F > logs/day" }]',
            "[apps.etl.database]", 'engine = "postgresql"', f'migrate = "{MIGRATE}"',
            'pg_bin = "/usr/lib/postgresql/15/bin"', "keep_backups = 3",
        ]
        for h in self.hosts.values():
            manager = {"manager": "supervisor", "supervisor_conf": str(h.supervisord.conf)} if h.supervisord else {}
            crontab = "" if self.real_crontab_on == h.name else "crontab"
            worker = ", ".join([*(f'{k} = "{v}"' for k, v in manager.items()), f'crontab = "{crontab}"'])
            lines += [f"[hosts.{h.name}]", f'hostname = "{h.sshd.hostname}"', f"port = {h.sshd.port}",
                      f'user = "{h.sshd.user}"', *(["primary = true"] if h.name == "a" else []),
                      f"[hosts.{h.name}.overrides]", f'deploy_to = "{h.root}"', f"worker = {{ {worker} }}"]
        lines += ["[groups]", 'etl = ["a", "b"]']
        self.inventory.write_text("\n".join(lines) + "\n")

    def fab(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SHIPFAB_HOSTS": str(self.inventory)}
        return subprocess.run([*FAB, "-r", str(REPO), *args], capture_output=True, text=True, env=env, timeout=240,
                              stdin=subprocess.DEVNULL, cwd=self.tmp)

    def stop(self) -> None:
        for h in self.hosts.values():
            if h.supervisord:
                h.supervisord.stop()
            pid = h.worker_pid() if h.supervisord is None else 0
            if pid:
                try:
                    os.killpg(pid, 9)
                except OSError:
                    pass
            h.sshd.stop()


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker")
    wheels = tmp / "wheels"  # pytest for the engine's venv (the gate), fetched once: deploys run offline
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(wheels),
                    "-r", str(ENGINE / "requirements.txt")], check=True)
    pg = PostgreSQL.start()
    r = Rig(tmp, wheels, engine_repo(tmp / "repo"), pg)
    try:
        yield r
    finally:
        r.stop()
        pg.stop()


def deployed(rig: Rig, ref: str, target: str = "a") -> str:
    """`ref` deployed (and serving) on `target`: the release it made."""
    ok(rig.fab("-H", target, "deploy", "--ref", ref, "-q"))
    return rig.hosts[target if target != "etl" else "a"].current()


def migration_runs(pg_url: str) -> int:
    import psycopg2

    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM migration_runs")
            return cur.fetchone()[0]
    finally:
        conn.close()


# ---------------------------------------------------------------- end to end


def test_group_deploy_migrates_once_moves_workers_after_their_job_and_cron_to_current(rig):
    a, b = rig.hosts["a"], rig.hosts["b"]
    for h in (a, b):
        (h.root / "crontab").write_text("MAILTO=ops@example.com\n0 3 * * * /usr/local/bin/backup\n")
    ok(rig.fab("-H", "etl", "deploy", "--ref", "v1"))
    runs = migration_runs(rig.url)
    first = a.current()
    assert b.current() == first and a.worker_release() == b.worker_release() == first

    out = ok(rig.fab("-H", "etl", "deploy", "--ref", "v2"))
    release = a.current()
    assert release != first and b.current() == release
    assert migration_runs(rig.url) == runs + 1  # once for the group, on the primary
    assert "[b] migrate         ok" in out and "skipped: migrations run once on a (primary)" in out
    assert "[a] health: status: HEALTHY (failure_rate 0.00%, disk free" in out
    for h in (a, b):
        # the old worker finished the job it was running after SIGTERM, before `current` moved
        switched = os.lstat(h.root / "current").st_mtime
        last_old = [j for j in h.jobs() if f" {first} job " in j][-1]
        assert last_old.endswith("done after SIGTERM"), h.jobs()
        assert float(last_old.split()[0]) <= switched + 0.05
        assert h.worker_release() == release
        text = h.crontab()
        assert text.startswith("MAILTO=ops@example.com\n0 3 * * * /usr/local/bin/backup\n# shipfab:etl begin\n")
        assert f"cd {h.root}/current && PATH={h.root}/current/.venv/bin:\"$PATH\" python -m engine.run" in text
        assert "date +\\%F > logs/day\n# shipfab:etl end\n" in text
    assert not (rig.tmp / "pwned").exists()  # no shell ever evaluated the .env

    health = rig.fab("-H", "b", "health-check")
    assert health.returncode == 0 and "status: HEALTHY; failure_rate 0.00%" in health.stdout
    inv = inv_health(rig.inventory, rig.tmp, "etl")
    assert inv.returncode == 0 and inv.stdout.count("healthy") == 2 and "status: HEALTHY" in inv.stdout, inv.stdout

    back = ok(rig.fab("-H", "etl", "rollback"))
    assert a.current() == b.current() == first and a.worker_release() == b.worker_release() == first, back


def test_failing_gate_changes_nothing_and_shows_the_test_summary(rig):
    a = rig.hosts["a"]
    release = deployed(rig, "v2")
    pid, tab, logged = a.worker_pid(), a.crontab(), len(a.log())
    res = rig.fab("-H", "a", "deploy", "--ref", "gatefail")
    assert res.returncode == 1
    assert "gate `python -m pytest -q -p no:cacheprovider engine/tests` failed (exit 1)" in res.stdout
    assert "short test summary info" in res.stdout and "FAILED engine/tests/test_broken.py::test_broken" in res.stdout
    assert "1 failed, 2 passed" in res.stdout and "nothing went live" in res.stdout
    assert a.current() == release and a.worker_pid() == pid and a.crontab() == tab
    assert "stop_processes" not in res.stdout and "backup_db" not in res.stdout
    assert a.log()[logged]["status"] == "failed" and not (a.root / "releases" / a.log()[logged]["release"]).exists()


def test_failing_smoke_run_is_undone(rig):
    a = rig.hosts["a"]
    release = deployed(rig, "v2")
    pid, tab = a.worker_pid(), a.crontab()
    res = rig.fab("-H", "a", "deploy", "--ref", "smokefail")
    assert res.returncode == 1 and "error: the dry run found 3 broken listings" in res.stdout
    assert "smoke `python -m engine.run --limit=10 --dry-run` failed (exit 2)" in res.stdout
    failed = a.log()[-1]["release"]
    assert a.current() == release and a.worker_pid() == pid and a.crontab() == tab
    assert not (a.root / "releases" / failed).exists() and "undo_remove_release ok" in res.stdout


@pytest.fixture
def real_crontab(rig):
    """Host `a` on the deploy user's real crontab (`crontab -l` / `crontab -`), for one test;
    never when that user already has a crontab (it is left alone), removed afterwards."""
    if shutil.which("crontab") is None:
        pytest.skip("no crontab command (Debian package cron)")
    if subprocess.run(["crontab", "-l"], capture_output=True).returncode == 0:
        pytest.skip("this user already has a crontab: the test does not touch it")
    rig.real_crontab_on = "a"
    rig.write()
    try:
        yield
    finally:
        subprocess.run(["crontab", "-r"], capture_output=True)
        rig.real_crontab_on = ""
        rig.write()


def crontab_l() -> str:
    return subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=True).stdout


def test_degraded_health_rolls_back_release_processes_and_exact_cron_block(rig, real_crontab):
    a = rig.hosts["a"]
    subprocess.run(["crontab", "-"], input="MAILTO=\"\"\n17 * * * * echo mine\n", text=True, check=True)
    release = deployed(rig, "v2")
    text = crontab_l()
    assert text.startswith("MAILTO=\"\"\n17 * * * * echo mine\n# shipfab:etl begin\n") and text.endswith(
        "# shipfab:etl end\n")
    # a person edits the block by hand and adds lines after it: those exact bytes must come back
    edited = text.replace("*/15 * * * *", "*/20 * * * *") + "# trailing comment  \n"
    subprocess.run(["crontab", "-"], input=edited, text=True, check=True)
    assert crontab_l() == edited

    res = rig.fab("-H", "a", "deploy", "--ref", "degraded")
    assert res.returncode == 1, res.stdout
    assert "[a] health: status: DEGRADED (failure_rate 25.00%" in res.stdout
    assert "not healthy: status line does not say HEALTHY: status: DEGRADED; failure rate 25.00% > 10%" in res.stdout
    assert "undo_restore_cron ok" in res.stdout and f"{release} is serving again" in res.stdout
    assert a.current() == release and a.worker_release() == release
    assert crontab_l() == edited  # byte for byte, the other lines too
    assert a.log()[-1]["status"] == "failed"
    # a rollback moves the exact block too
    newer = deployed(rig, "v2")
    assert newer != release and "*/15 * * * *" in crontab_l()
    ok(rig.fab("-H", "a", "rollback"))
    assert a.current() == release and a.worker_release() == release and crontab_l() == edited


def test_preflight_is_stack_aware():
    from fabfile.steps.preflight import facts_cmd, required_binaries

    data = {"apps": {"etl": {"stack": "worker", "deploy_to": "/srv/etl", "worker": {
        "manager": "supervisor", "cron": [{"schedule": "@hourly", "command": "x"}]}}},
        "hosts": {"h": {"hostname": "h", "app": "etl"}}}
    app = parse_inventory(data, Path("hosts.toml")).targets["h"].app
    assert {"supervisorctl", "crontab"} <= set(required_binaries(app)) and "kill" not in required_binaries(app)
    assert "socket" not in facts_cmd(app, Layout(app.deploy_to))  # no gunicorn port to check
    data["apps"]["etl"]["worker"]["crontab"] = "tab"
    assert "crontab" not in required_binaries(parse_inventory(data, Path("hosts.toml")).targets["h"].app)
