"""End to end: the real `fab` CLI deploying over real sshd to supervisor/pidfile-managed
gunicorn behind real nginx, with faults."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .conftest import inv_health
from .services import LoadGenerator

pytestmark = pytest.mark.integration


def ok(res) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_deploy_redeploy_rollback_with_zero_failed_requests(world):
    host = world.add_host("web1", manager="supervisor", nginx=True)
    out = ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    assert "restart" in out and "start, 2 workers" in out
    assert host.health()["version"] == "v1"
    first = host.current()

    load = LoadGenerator(host.nginx.url + "/health", rate=50).start()
    out = ok(world.fab("-H", "web1", "deploy", "--ref", "v2"))
    result = load.stop()
    assert "reload, 2 workers" in out and "pip_sync        ok" in out and "(reused)" in out
    assert result.total > 0 and result.failed == 0, result.failures
    assert host.health()["version"] == "v2"
    second = host.current()
    assert second > first

    # the full revision is recorded, in the release and in the log
    revision = (host.deploy_to / "releases" / second / "REVISION").read_text().strip()
    assert len(revision) == 40 and host.health()["revision"] == revision
    entry = [e for e in host.log() if e["release"] == second][-1]
    assert entry["status"] == "success" and entry["revision"] == revision and entry["previous"] == first
    assert set(entry["timings"]) >= {"lock", "deploy_code", "pip_sync", "switch_release", "restart_gunicorn", "health_check"}
    assert (host.deploy_to / "shared" / ".env").stat().st_mode & 0o777 == 0o600
    assert os.readlink(host.deploy_to / "releases" / second / ".env") == str(host.deploy_to / "shared" / ".env")

    load = LoadGenerator(host.nginx.url + "/health", rate=50).start()
    started = time.monotonic()
    ok(world.fab("-H", "web1", "rollback"))
    took = time.monotonic() - started
    result = load.stop()
    assert result.failed == 0, result.failures
    assert host.current() == first and host.health()["version"] == "v1"
    assert [e for e in host.log() if e["release"] == second][-1]["status"] == "rolled_back"
    print(f"rollback took {took:.2f}s")  # shown with -s; the benchmark measures it properly

    table = ok(world.fab("-H", "web1", "releases"))
    assert f"* {first}" in table and "rolled_back" in table
    assert not host.lock_held()


def test_unhealthy_release_never_goes_live(world):
    """The boot check answers /health in process before anything serves the release: a 500 stops the deploy there."""
    host = world.add_host("web1", manager="supervisor", nginx=True)
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    good = host.current()

    load = LoadGenerator(host.nginx.url + "/", rate=20).start()
    res = world.fab("-H", "web1", "deploy", "--ref", "broken")
    result = load.stop()
    assert res.returncode == 1, res.stdout + res.stderr
    assert "boot_check      FAILED" in res.stdout and "500" in res.stdout and "broken" in res.stdout
    assert "rolled_back" in res.stdout and "nothing went live" in res.stdout
    assert host.current() == good and host.health()["version"] == "v1"
    assert host.releases() == [good]  # the failed release directory is gone
    assert host.log()[-1]["status"] == "failed" and "500" in host.log()[-1]["reason"]
    assert not host.lock_held()
    assert result.total > 0 and result.failed == 0, result.failures


def test_first_release_failing_its_boot_check_leaves_nothing(world):
    host = world.add_host("web1", manager="pidfile")
    res = world.fab("-H", "web1", "deploy", "--ref", "broken")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "nothing went live" in res.stdout
    assert host.current() == "" and host.releases() == [] and not host.lock_held()
    assert ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))


def test_pidfile_manager_upgrades_master_when_requirements_change(world):
    host = world.add_host("web1", manager="pidfile", nginx=True)
    ok(world.fab("-H", "web1", "deploy", "--ref", "v2"))
    pid_before = int(Path(host.layout.pidfile).read_text())
    load = LoadGenerator(host.nginx.url + "/health", rate=50).start()
    out = ok(world.fab("-H", "web1", "deploy", "--ref", "v3"))
    result = load.stop()
    assert "(built)" in out and "upgrade, 2 workers" in out
    assert result.failed == 0, result.failures
    pid_after = int(Path(host.layout.pidfile).read_text())
    assert pid_after != pid_before and host.health()["version"] == "v3"
    time.sleep(0.5)
    assert not Path(f"/proc/{pid_before}").exists() or "Z" in Path(f"/proc/{pid_before}/stat").read_text().split()[2]
    assert len([p for p in (host.deploy_to / "venvs").iterdir() if p.is_symlink()]) == 2  # venvs/<hash> -> its build

    # rolling back to v2 crosses venvs again: another USR2, and the old venv is still there
    out = ok(world.fab("-H", "web1", "rollback"))
    assert "upgrade, 2 workers" in out and host.health()["version"] == "v2"


def test_concurrent_deploy_is_refused_with_holder_details(world):
    host = world.add_host("web1", manager="pidfile")
    ok(world.fab("-H", "web1", "lock"))
    res = world.fab("-H", "web1", "deploy", "--ref", "v1")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "deploy lock is held by" in res.stdout and "manual lock" in res.stdout and "fab -H web1 unlock" in res.stdout
    assert host.releases() == []
    out = ok(world.fab("-H", "web1", "unlock"))
    assert "removed the lock held by" in out and "manual lock" in out
    assert not host.lock_held()


def test_two_deploys_at_once_one_wins(world):
    host = world.add_host("web1", manager="pidfile")
    procs = [world.popen_fab("-H", "web1", "deploy", "--ref", "v1") for _ in range(2)]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outputs
    assert any("deploy lock is held by" in o for o in outputs)
    assert len(host.releases()) == 1 and not host.lock_held()


def test_unknown_release_id_lists_valid_ones(world):
    host = world.add_host("web1", manager="pidfile")
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    res = world.fab("-H", "web1", "rollback", "--to", "20990101T000000Z")
    assert res.returncode == 64
    assert "unknown release '20990101T000000Z'; valid ids: (none)" in res.stderr
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1  # one line, no lock line, no tables
    assert "Traceback" not in res.stdout + res.stderr
    assert not host.lock_held()


def test_group_deploys_every_host_under_one_release_id(world):
    a = world.add_host("web1", manager="supervisor")
    b = world.add_host("web2", manager="pidfile")
    world.groups["prod"] = ["web1", "web2"]
    world.write()
    out = ok(world.fab("-H", "prod", "deploy", "--ref", "v2"))
    assert a.current() == b.current() != ""
    assert a.health()["version"] == b.health()["version"] == "v2"
    assert out.count("deploy: ok") == 1 and "[web1] health_check" in out and "[web2] health_check" in out

    # default target: `fab rollback` exactly as typed uses the inventory's default
    world.inventory.write_text('default = "prod"\n' + world.inventory.read_text())
    res = world.fab("rollback")
    assert res.returncode == 64 and "no earlier release that served" in res.stderr  # only one release each: refused clearly


def test_group_stops_at_first_failed_host(world):
    a = world.add_host("web1", manager="pidfile")
    b = world.add_host("web2", manager="pidfile")
    world.groups["prod"] = ["web1", "web2"]
    world.write()
    res = world.fab("-H", "prod", "deploy", "--ref", "broken")
    assert res.returncode == 1  # the boot checks failed before any host published: nothing went live
    assert "boot_check      FAILED" in res.stdout and "serving: - on web1, web2" in res.stdout
    assert b.releases() == [] and not a.lock_held()


def test_dry_run_changes_nothing(world):
    host = world.add_host("web1", manager="supervisor")
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    ok(world.fab("-H", "web1", "deploy", "--ref", "v2"))
    before = snapshot(host.deploy_to)
    out = ok(world.fab("-H", "web1", "deploy", "--ref", "v3", "--dry-run"))
    assert "would run: set -o pipefail; rm -rf" in out and "base64 -d | tar -xz" in out
    assert "would run: ln -sfn releases/" in out
    assert "supervisorctl -c" in out and "would check:" in out
    assert snapshot(host.deploy_to) == before
    out = ok(world.fab("-H", "web1", "rollback", "--dry-run"))
    assert "would run: ln -sfn releases/" in out and "signal HUP app" in out
    assert snapshot(host.deploy_to) == before and host.health()["version"] == "v2"


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, size, mtime and link target."""
    out = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or path.name in ("gunicorn.log", "gunicorn.pid", "gunicorn.ctl"):
            continue
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                            os.readlink(path) if path.is_symlink() else None)
    return out


def test_repository_url_source_is_mirrored_on_the_host(world, app_repo):
    world.extra_app = {"repo": f"file://{app_repo}", "checkout": ""}
    host = world.add_host("web1", manager="pidfile")
    world.write()
    text = world.inventory.read_text().replace(f'checkout = "{app_repo}"\n', "")
    world.inventory.write_text(text)
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    assert (host.deploy_to / "repo" / "HEAD").exists()
    ok(world.fab("-H", "web1", "deploy", "--ref", "v2"))
    assert host.health()["version"] == "v2"
    assert host.health()["revision"] == (host.deploy_to / "releases" / host.current() / "REVISION").read_text().strip()


def test_prune_keeps_keep_releases_and_cleans_venvs(world):
    host = world.add_host("web1", manager="pidfile")
    for ref in ("v1", "v2", "v3", "v1", "v2"):
        ok(world.fab("-H", "web1", "deploy", "--ref", ref))
    assert len(host.releases()) == 3  # keep_releases = 3
    venvs = {p.name for p in (host.deploy_to / "venvs").iterdir() if p.is_symlink()}
    used = {os.readlink(host.deploy_to / "releases" / r / ".venv").rsplit("/", 1)[-1] for r in host.releases()}
    assert venvs == used


def test_the_venv_hash_is_the_same_whether_the_facts_or_python_give_the_version(world):
    """With pre-flight checks the venv hash takes python's sys.version from the facts; without,
    pip_sync asks python: both name the same venv, which is reused, never built twice."""
    host = world.add_host("web1", manager="pidfile")
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    for args in (("--ref", "v2", "--skip-checks"), ("--ref", "v1"), ("--ref", "v2", "--skip-checks")):
        assert "(reused)" in ok(world.fab("-H", "web1", "deploy", "-v", *args)), args
    venvs = [p.name for p in (host.deploy_to / "venvs").iterdir()]
    assert len(venvs) == 2, venvs  # the venv and the build directory its link names
    used = {os.readlink(host.deploy_to / "releases" / r / ".venv") for r in host.releases()}
    assert len(used) == 1 and len(host.releases()) == 3


def test_standalone_steps_and_inv_health(world):
    host = world.add_host("web1", manager="supervisor")
    res = inv_health(world.inventory, world.tmp)
    assert res.returncode == 1 and "NOT DEPLOYED" in res.stdout  # a server with nothing current is not healthy
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    out = ok(world.fab("-H", "web1", "deploy-code", "--ref", "v2"))
    new = host.releases()[-1]
    assert "(not switched, not logged)" in out and host.current() != new
    ok(world.fab("-H", "web1", "pip-sync"))
    ok(world.fab("-H", "web1", "switch-release", "--to", new))
    out = ok(world.fab("-H", "web1", "restart"))
    assert f"reload, 2 workers on {new}" in out
    assert "healthy" in ok(world.fab("-H", "web1", "health-check"))
    assert host.health()["version"] == "v2"

    res = inv_health(world.inventory, world.tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "web1" in res.stdout and new in res.stdout and "healthy" in res.stdout
    host.supervisord.ctl("stop", "app")
    res = inv_health(world.inventory, world.tmp)
    assert res.returncode == 1 and "UNHEALTHY" in res.stdout and "no HTTP answer" in res.stdout


def test_unknown_host_key_is_refused(world):
    host = world.add_host("web1", manager="pidfile")
    (world.tmp / "known_hosts").write_text("")
    res = world.fab("-H", "web1", "deploy", "--ref", "v1")
    assert res.returncode == 4 and "unknown host key" in res.stdout + res.stderr  # pre-flight: nothing changed
    assert host.releases() == []
    res = world.fab("-H", "web1", "check")  # `check` answers as the deploy does (README: exit codes)
    assert res.returncode == 4 and "unknown host key" in res.stdout + res.stderr
    host.sshd.stop()  # an unreachable host is a pre-flight failure too, blamed on the right host
    res = world.fab("-H", "web1", "deploy", "--ref", "v1")
    assert res.returncode == 4 and "preflight_failed" in res.stdout and "web1" in res.stdout
    res = world.fab("-H", "web1", "check")
    assert res.returncode == 4 and "unreachable" in res.stdout and "Traceback" not in res.stdout + res.stderr


def test_health_check_with_curl_on_the_host(world):
    host = world.add_host("web1", manager="pidfile")
    host.health_via = "host"
    world.write()
    out = ok(world.fab("-H", "web1", "deploy", "--ref", "v1", "-v"))
    assert "[web1] $ curl -sS --max-time 5" in out and "health_check    ok" in out
    res = world.fab("-H", "web1", "deploy", "--ref", "broken")
    assert res.returncode == 1 and "status 500 (expected 200)" in res.stdout  # the body came back through curl
    assert host.health()["version"] == "v1"
