"""Zero failed requests, measured through real nginx at ~20 req/s while the real `fab` CLI
deploys over real sshd: a release that crashes at import or never answers is stopped by the
boot check before any gunicorn process is touched; a venv change restarts supervisor's
gunicorn through a handover (a second gunicorn on the same port, --reuse-port); the pidfile
manager upgrades with USR2; a rollback across venvs hands over too."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest

from fabfile.inventory import load_inventory
from fabfile.managers.gunicorn import handover_argv, handover_pidfile

from .conftest import World, git, pids_with
from .services import LoadGenerator, LoadResult

pytestmark = pytest.mark.integration

RATE = 20  # requests per second through nginx
MIGRATE = Path("/proc/sys/net/ipv4/tcp_migrate_req")


@pytest.fixture(scope="module", autouse=True)
def migrate_queued_connections():
    """net.ipv4.tcp_migrate_req=1 for these tests (what the restart warns about), restored after."""
    old = MIGRATE.read_text().strip()
    subprocess.run(["sysctl", "-qw", "net.ipv4.tcp_migrate_req=1"], check=True)
    yield
    subprocess.run(["sysctl", "-qw", f"net.ipv4.tcp_migrate_req={old}"], check=True)


@pytest.fixture(scope="module")
def zd_repo(app_repo, tmp_path_factory) -> Path:
    """The sample app's repo plus two releases on v2's requirements: `crash` (raises at
    import) and `hang` (its /health never answers)."""
    repo = tmp_path_factory.mktemp("zdrepo")
    subprocess.run(["git", "clone", "-q", str(app_repo), str(repo)], check=True, capture_output=True)
    git(repo, "checkout", "-q", "-b", "zd", "v2")
    source = (repo / "app.py").read_text()
    changed = {
        "crash": source.replace("from flask import", "import shipfab_missing_module  # noqa: F401\nfrom flask import"),
        "hang": "import time\n" + source.replace("def health():\n", "def health():\n    time.sleep(3600)\n"),
    }
    for tag, text in changed.items():
        assert text != source
        (repo / "app.py").write_text(text)
        (repo / "VERSION").write_text(tag + "\n")
        git(repo, "commit", "-q", "-am", tag)
        git(repo, "tag", tag)
        git(repo, "checkout", "-q", "zd")
        git(repo, "reset", "-q", "--hard", "v2")
    return repo


@pytest.fixture
def zworld(tmp_path, wheelhouse, zd_repo):
    w = World(tmp_path, wheelhouse, zd_repo)
    yield w
    w.stop()


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def under_load(world: World, host, *args: str) -> tuple[subprocess.CompletedProcess[str], LoadResult]:
    """Run `fab -H <host> *args` while ~20 req/s go through nginx (from before it starts
    until a second after it ends); return its result and the load's."""
    load = LoadGenerator(host.nginx.url + "/health", rate=RATE, max_seconds=150).start()
    time.sleep(1)
    res = world.fab("-H", host.name, *args)
    time.sleep(1)
    result = load.stop()
    print(f"{' '.join(args)}: {result.failed} failed of {result.total} requests")  # shown with -s
    assert result.total > 0
    return res, result


def managed_pid(host) -> str:
    return host.supervisord.ctl("pid", "app").stdout.strip()


def handover_pids(host) -> list[int]:
    """Processes whose command line names this host's handover pidfile (master + workers)."""
    return pids_with(handover_pidfile(host.layout))


@pytest.mark.parametrize(("ref", "says"), [
    ("crash", "does not import (app:app): ModuleNotFoundError: No module named 'shipfab_missing_module'"),
    ("hang", "fails on GET /health (app:app): BootTimeout: GET /health took longer than 5 s"),
])
def test_release_that_does_not_boot_never_touches_gunicorn(zworld, ref, says):
    host = zworld.add_host("web1", manager="supervisor", nginx=True)
    ok(zworld.fab("-H", "web1", "deploy", "--ref", "v2"))
    good, master = host.current(), managed_pid(host)

    res, load = under_load(zworld, host, "deploy", "--ref", ref)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert says in out and "boot_check" in out and "FAILED" in out
    assert "app.py:" in out  # a traceback line of the app itself, not the shell script
    assert "timeout -k" not in out and "BOOT_ERROR" not in out
    assert load.failed == 0, load.failures
    assert host.current() == good and host.health()["version"] == "v2"
    assert managed_pid(host) == master  # no gunicorn process was touched
    assert host.log()[-1]["status"] == "failed" and not host.lock_held()


def test_requirements_change_and_rollback_under_supervisor_hand_over(zworld):
    host = zworld.add_host("web1", manager="supervisor", nginx=True)
    ok(zworld.fab("-H", "web1", "deploy", "--ref", "v2"))
    master = managed_pid(host)

    res, load = under_load(zworld, host, "deploy", "--ref", "v3")  # new requirements: a new venv
    out = ok(res)
    assert "(built)" in out and "restart with handover, 2 workers" in out
    assert "imports and answers /health 200" in out and "warning:" not in out
    assert load.failed == 0, load.failures
    assert host.health()["version"] == "v3" and managed_pid(host) != master
    assert handover_pids(host) == [] and not Path(handover_pidfile(host.layout)).exists()

    res, load = under_load(zworld, host, "rollback")  # back across venvs: another handover
    out = ok(res)
    assert "restart with handover, 2 workers" in out
    assert load.failed == 0, load.failures
    assert host.health()["version"] == "v2" and handover_pids(host) == []


def test_requirements_change_under_pidfile_upgrades_with_usr2(zworld):
    host = zworld.add_host("web1", manager="pidfile", nginx=True)
    ok(zworld.fab("-H", "web1", "deploy", "--ref", "v2"))
    res, load = under_load(zworld, host, "deploy", "--ref", "v3")
    out = ok(res)
    assert "upgrade, 2 workers" in out
    assert load.failed == 0, load.failures
    assert host.health()["version"] == "v3"


def test_leftover_handover_of_an_interrupted_run_is_stopped(zworld):
    host = zworld.add_host("web1", manager="supervisor", nginx=True)
    ok(zworld.fab("-H", "web1", "deploy", "--ref", "v2"))
    app = load_inventory(zworld.inventory).targets["web1"].app
    release = host.current()
    subprocess.run(shlex.join(handover_argv(app, host.layout, release)), shell=True, check=True,
                   cwd=host.deploy_to / "releases" / release)
    pidfile = Path(handover_pidfile(host.layout))
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = int(pidfile.read_text())

    res, load = under_load(zworld, host, "deploy", "--ref", "v3")
    out = ok(res)
    assert "restart with handover" in out and load.failed == 0, load.failures
    assert not Path(f"/proc/{leftover}").exists() or " Z " in Path(f"/proc/{leftover}/stat").read_text()
    assert handover_pids(host) == [] and not pidfile.exists()


def test_master_without_reuse_port_gets_a_plain_restart_with_a_warning(zworld):
    host = zworld.add_host("web1", manager="supervisor", nginx=True)
    conf = host.supervisord.conf
    conf.write_text(conf.read_text().replace(" --reuse-port", ""))  # a program written for shipfab < this
    assert host.supervisord.ctl("update").returncode == 0
    ok(zworld.fab("-H", "web1", "deploy", "--ref", "v2"))
    res, load = under_load(zworld, host, "deploy", "--ref", "v3")
    out = ok(res)
    assert "restart without handover" in out and "lacks --reuse-port" in out and "add --reuse-port" in out
    assert host.health()["version"] == "v3"
    print(f"plain restart (no handover): {load.failed} failed of {load.total}")
