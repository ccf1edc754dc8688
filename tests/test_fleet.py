"""Fleets (issue 13): five real sshd hosts, each with its own deploy root and gunicorn
(pidfile manager, 1 worker), deployed through the real `fab` CLI in parallel and in rolling
batches; failures before publishing, in verify (--batch / --max-fail / --all-or-nothing),
a held lock, a signal, migrations run once for the fleet, and output never mixed. The pure
parts (--batch / --max-fail parsing, batches, the phase plan, the timing table) first."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fabfile import errors, hostflow, parallel, rollout
from fabfile import fleet as fleet_module
from fabfile.context import HostRun, Options
from fabfile.errors import InventoryError, UsageError
from fabfile.fleet import timing_table
from fabfile.inventory import load_inventory
from fabfile.output import Printer
from fabfile.remote import Remote
from fabfile.stacks.base import Step
from fabfile.stacks.gunicorn import GUNICORN

from .conftest import MIGRATION_0004, World, git, migrations_repo
from .pg import PostgreSQL

HOSTS = ["h1", "h2", "h3", "h4", "h5"]


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("text", "minimum", "share"), [
    ("3", 1, rollout.Share(3)), ("25%", 1, rollout.Share(25, True)), ("0", 0, rollout.Share(0)),
    (" 100% ", 1, rollout.Share(100, True)), (None, 1, None), ("", 0, None), (2, 1, rollout.Share(2)),
])
def test_parse_share_accepts_counts_and_percentages(text, minimum, share):
    assert rollout.parse_share(text, "batch", minimum) == share


@pytest.mark.parametrize(("text", "minimum"), [
    ("-1", 0), ("1.5", 1), ("0", 1), ("0%", 1), ("101%", 1), ("abc", 0), ("%", 0), ("5%%", 0), ("1e3", 0),
])
def test_parse_share_refuses_anything_else_as_a_usage_error(text, minimum):
    with pytest.raises(UsageError) as exc:
        rollout.parse_share(text, "max-fail", minimum)
    assert exc.value.exit_code == errors.USAGE and "--max-fail" in str(exc.value)


def test_parallel_batches_and_tolerance():
    assert rollout.parse_parallel(None, 7) == 7 and rollout.parse_parallel("3", 7) == 3
    for bad in ("0", "-2", "x", "257"):
        with pytest.raises(UsageError):
            rollout.parse_parallel(bad, 7)
    hosts = list("abcdefghij")
    assert rollout.batches(hosts, None) == [hosts]
    assert rollout.batches(hosts, rollout.Share(4)) == [list("abcd"), list("efgh"), list("ij")]
    assert rollout.batches(hosts, rollout.Share(25, True)) == [list("abc"), list("def"), list("ghi"), ["j"]]  # ceil
    assert rollout.batches(hosts[:1], rollout.Share(1, True)) == [["a"]]  # never an empty batch
    assert rollout.tolerated(None, 10) == 0 and rollout.tolerated(rollout.Share(2), 10) == 2
    assert rollout.tolerated(rollout.Share(25, True), 10) == 2  # a tolerance rounds down
    assert rollout.tolerated(rollout.Share(10, True), 20) == 2


def test_parallel_is_a_defaults_setting_of_hosts_toml(tmp_path):
    path = tmp_path / "hosts.toml"
    app = '[apps.a]\nstack = "gunicorn"\ndeploy_to = "/srv/a"\n[apps.a.health]\nurl = "http://x/health"\n'
    path.write_text(app)
    assert load_inventory(path).parallel == 10
    path.write_text("[defaults]\nparallel = 3\n" + app)
    assert load_inventory(path).parallel == 3
    for bad in ("0", "300", '"4"'):
        path.write_text(f"[defaults]\nparallel = {bad}\n" + app)
        with pytest.raises(InventoryError, match="defaults.parallel"):
            load_inventory(path)


def test_plan_barriers_at_each_phase_change_before_publishing():
    segments, rest = hostflow.plan(GUNICORN.steps)
    assert [[s.name for s in seg] for seg in segments] == [["deploy_code", "pip_sync"], ["backup_db", "migrate"],
                                                           ["boot_check"]]
    assert [s.name for s in rest] == ["switch_release", "restart_gunicorn", "health_check"]
    only = [Step("a", lambda run: None), Step("b", lambda run: None, "verify"), Step("c", lambda run: None, "migrate")]
    assert [[s.name for s in seg] for seg in hostflow.plan(only)[0]] == [["a"]]
    assert [s.name for s in hostflow.plan(only)[1]] == ["b", "c"]  # after the first publish step: per batch


def test_each_runs_up_to_size_at_once_and_stops_on_the_flag():
    met = threading.Barrier(3, timeout=10)  # passes only when three workers wait on it together
    seen: list[int] = []
    parallel.each([1, 2, 3], lambda i: (met.wait(), seen.append(i)), 3, parallel.Stop())
    assert sorted(seen) == [1, 2, 3]
    order: list[str] = []
    parallel.each(["a", "b", "c"], lambda x: order.append(f"{x}:{threading.current_thread().name}"), 1, parallel.Stop())
    assert order == ["a:MainThread", "b:MainThread", "c:MainThread"]  # one at a time: in the main thread, in order
    stop = parallel.Stop()
    stop.check()  # not set: nothing raised
    stop.halt("stopped: h3 failed")
    with pytest.raises(errors.StepFailed, match="h3 failed"):
        stop.check()
    with pytest.raises(ZeroDivisionError):  # a bug in a worker surfaces once all finished
        parallel.each([0, 1], lambda i: 1 / i, 2, parallel.Stop())


def _runs(n: int, tmp_path: Path) -> list[HostRun]:
    (tmp_path / "hosts.toml").write_text(
        '[apps.a]\nstack = "gunicorn"\ndeploy_to = "/srv/a"\n[apps.a.health]\nurl = "http://x/health"\n'
        + "".join(f'[hosts.n{i}]\nhostname = "127.0.0.1"\n' for i in range(n)))
    inv = load_inventory(tmp_path / "hosts.toml")
    printer = Printer(verbosity=0)
    runs = [HostRun(t, Remote(t, printer), printer, Options()) for t in inv.targets.values()]
    for i, run in enumerate(runs):
        run.timings = {"lock": 0.1 * (i + 1), "deploy_code": 1.0 + i}
    return runs


def test_timing_table_columns_per_host_up_to_eight_then_min_median_max(tmp_path):
    few = timing_table(_runs(3, tmp_path)).splitlines()
    assert few[0].split() == ["step", "(s)", "n0", "n1", "n2"] and few[3].split() == ["deploy_code", "1.00", "2.00", "3.00"]
    many = timing_table(_runs(12, tmp_path)).splitlines()
    assert many[0].split() == ["step", "(s)", "hosts", "min", "median", "max", "slowest"]
    assert many[3].split() == ["deploy_code", "12", "1.00", "6.50", "12.00", "n11"]
    odd = timing_table(_runs(9, tmp_path)).splitlines()
    assert odd[3].split() == ["deploy_code", "9", "1.00", "5.00", "9.00", "n8"]


# ---------------------------------------------------------------- the fleet


@dataclass
class FleetWorld(World):
    """World with 1-worker gunicorns and per-host inventory edits (`extra`: host -> lines
    added to its overrides; `swaps`: host -> (old, new) replacements of text only its lines hold)."""

    extra: dict[str, list[str]] = field(default_factory=dict)
    swaps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def write(self) -> None:
        super().write()
        text = self.inventory.read_text().replace("workers = 2,", "workers = 1,")
        for name, lines in self.extra.items():
            text = text.replace(f"[hosts.{name}.overrides]\n", f"[hosts.{name}.overrides]\n" + "".join(
                line + "\n" for line in lines))
        for swaps in self.swaps.values():
            for old, new in swaps:
                assert text.count(old) == 1, old
                text = text.replace(old, new)
        self.inventory.write_text(text)

    def reset(self) -> None:
        self.healthy()
        self.extra.clear()
        self.swaps.clear()
        self.write()

    def unhealthy(self, name: str) -> None:
        """On `name`, the tag `fragile` passes its boot check but fails its health check under
        gunicorn (FRAGILE=1 in its .env), in verify; its previous release serves fine again."""
        env = self.hosts[name].deploy_to / "shared" / ".env"
        env.write_text("FRAGILE=1\n")
        self.swaps[name] = [(f'url = "http://127.0.0.1:{self.hosts[name].port}/health"',
                             f'url = "http://127.0.0.1:{self.hosts[name].port}/health", timeout = 5')]
        self.write()

    def healthy(self) -> None:
        for host in self.hosts.values():
            (host.deploy_to / "shared" / ".env").unlink(missing_ok=True)

    def serving(self) -> dict[str, str]:
        return {name: h.current() for name, h in self.hosts.items()}


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def new_dirs(world: World, before: dict[str, list[str]]) -> dict[str, list[str]]:
    return {n: sorted(set(h.releases()) - set(before[n])) for n, h in world.hosts.items()}


FRAGILE_APP = """

from flask import request as _request


@app.before_request
def _fragile():  # this host's .env says FRAGILE=1: unhealthy under gunicorn (the boot check is not)
    if os.environ.get("FRAGILE") == "1" and "gunicorn" in _request.environ.get("SERVER_SOFTWARE", ""):
        return "fragile here", 500
"""


@pytest.fixture(scope="module")
def fleet_repo(app_repo: Path, tmp_path_factory) -> Path:
    """The sample app's repo plus the tag `fragile` (v2 that fails under gunicorn where FRAGILE=1)."""
    repo = tmp_path_factory.mktemp("fleetrepo")
    shutil.copytree(app_repo, repo, dirs_exist_ok=True)
    git(repo, "checkout", "-q", "-b", "fragile", "v2")
    (repo / "app.py").write_text((repo / "app.py").read_text() + FRAGILE_APP)
    (repo / "VERSION").write_text("fragile\n")
    git(repo, "commit", "-q", "-am", "fragile")
    git(repo, "tag", "fragile")
    git(repo, "checkout", "-q", "main")
    return repo


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, wheelhouse, fleet_repo):
    """Five hosts serving v1 (deployed by the fleet itself, in parallel)."""
    world = FleetWorld(tmp_path_factory.mktemp("fleet"), wheelhouse, fleet_repo)
    try:
        for name in HOSTS:
            world.add_host(name, manager="pidfile")
        world.groups["fleet"] = HOSTS
        world.write()
        ok(world.fab("-H", "fleet", "deploy", "--ref", "v1"))
        yield world
    finally:
        world.stop()


@pytest.fixture
def clean(fleet):
    """The fleet, every host serving one v1 release (redeployed when a test left it otherwise)."""
    fleet.reset()
    if len(set(fleet.serving().values())) != 1 or any(h.health()["version"] != "v1" for h in fleet.hosts.values()):
        ok(fleet.fab("-H", "fleet", "deploy", "--ref", "v1"))
    yield fleet
    fleet.reset()
    for host in fleet.hosts.values():
        assert not host.lock_held()


def outcome(out: str) -> dict[str, str]:
    """host -> status, from the outcome table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in HOSTS and re.fullmatch(r"\d{8}T\d{6}Z|-", parts[1]):
            rows[parts[0]] = parts[2]
    return rows


def test_parallel_deploy_one_release_everywhere_lines_never_mixed_and_fleet_rollback(clean, tmp_path):
    world = clean
    v1 = world.serving()
    assert len(set(v1.values())) == 1 and "" not in v1.values()
    report = tmp_path / "deploy.json"
    res = world.fab("-H", "fleet", "deploy", "--ref", "v2", "--verbose", "--json", str(report))
    out = ok(res)
    now = world.serving()
    release = now["h1"]
    assert set(now.values()) == {release} and release != v1["h1"]
    assert all(h.health()["version"] == "v2" for h in world.hosts.values())
    assert f"serving: {release} on h1, h2, h3, h4, h5" in out and outcome(out) == dict.fromkeys(HOSTS, "success")
    # phases across the fleet: every host prepared (and booted the new code) before any host switched
    lines = out.splitlines()
    last_prepare = max(i for i, line in enumerate(lines) if re.match(r"\[h\d\] boot_check +ok", line))
    first_publish = min(i for i, line in enumerate(lines) if re.match(r"\[h\d\] switch_release +ok", line))
    assert last_prepare < first_publish
    # one timing table (hosts as columns), one outcome table
    assert out.count("step (s)") == 1 and re.search(r"^step \(s\) +h1 +h2 +h3 +h4 +h5$", out, re.M)
    # every line whole: a host's lines start with its prefix and hold no other host's; the rest are the run's own
    for line in lines + res.stderr.splitlines():
        found = re.findall(r"\[h\d\] ", line)
        if found:
            assert line.startswith(found[0]) and len(found) == 1, line
        else:
            assert _fleet_line(line), line
    hosts = json.loads(report.read_text())["hosts"]
    assert [h["host"] for h in hosts] == HOSTS and {h["serving"] for h in hosts} == {release}

    back = ok(world.fab("-H", "fleet", "rollback"))
    assert world.serving() == v1 and f"serving: {v1['h1']} on h2, h3, h4, h5, h1" in back  # the primary goes last
    assert all(h.health()["version"] == "v1" for h in world.hosts.values())
    assert all(h.log()[-1]["event"] == "rollback_to" for h in world.hosts.values())

    history = ok(world.fab("-H", "fleet", "history"))
    assert "DIFFERS" not in history and "not on the same release" not in history


FLEET_LINE = re.compile(
    r"^$|^-[- ]*$|^release \d{8}T\d{6}Z|^batch \d+/\d+: |^serving: |^(deploy|rollback): |^step \(s\)|"
    r"^(lock|deploy_code|pip_sync|backup_db|migrate|boot_check|switch_release|restart_gunicorn|health_check|finish|"
    r"total|undo_\w+) |^host +release|^(h\d) +(\d{8}T\d{6}Z|-) |^check +host|^\w+ +h\d +(ok|WARN|FAIL)")


def _fleet_line(line: str) -> bool:
    """A line of the run itself (tables, release, batches, serving, verdict): no host prefix."""
    return bool(FLEET_LINE.search(line))


def test_a_branch_moving_during_the_run_still_gives_every_host_one_commit(clean):
    """The ref is resolved once, before anything changes: a commit that lands on the branch while
    the fleet deploys (one host at a time here) reaches none of the hosts still to come."""
    world = clean
    git(world.repo, "branch", "-f", "moving", "v2")
    before = git(world.repo, "rev-parse", "moving").strip()
    moved: list[str] = []

    class MoveTheBranchAfterTheFirstCode(Printer):
        def line(self, text: str, host: str = "", level: int = 1, err: bool = False) -> None:
            super().line(text, host, level, err)
            if text.startswith("deploy_code") and " ok " in text and not moved:
                commit = git(world.repo, "commit-tree", "v2^{tree}", "-p", before, "-m", "lands mid-run").strip()
                git(world.repo, "update-ref", "refs/heads/moving", commit)
                moved.append(commit)

    targets = load_inventory(world.inventory).resolve("fleet")
    code = fleet_module.deploy(targets, MoveTheBranchAfterTheFirstCode(verbosity=1),
                               Options(ref="moving", parallel=1))
    assert code == errors.OK and moved and moved[0] != before
    revisions = {h: (host.deploy_to / "current" / "REVISION").read_text().strip() for h, host in world.hosts.items()}
    assert set(revisions.values()) == {before}, revisions


def test_a_host_failing_in_prepare_publishes_nothing_anywhere(clean):
    world = clean
    before = world.serving()
    dirs = {n: h.releases() for n, h in world.hosts.items()}
    world.extra["h3"] = ['python = "/nonexistent/python3"']
    world.write()
    res = world.fab("-H", "fleet", "deploy", "--ref", "v2", "--skip-checks")
    assert res.returncode == 1, res.stdout + res.stderr
    assert world.serving() == before  # nothing published anywhere
    assert new_dirs(world, dirs) == dict.fromkeys(HOSTS, [])  # every prepared release taken back
    status = outcome(res.stdout)
    assert status["h3"] == "rolled_back" and set(status.values()) == {"rolled_back"}
    assert "stopped: h3 failed in pip_sync before any host published" in res.stdout
    assert "switch_release" not in res.stdout
    assert all(h.health()["version"] == "v1" for h in world.hosts.values())


def test_verify_failure_in_batch_two_stops_later_batches(clean):
    world = clean
    before = world.serving()
    dirs = {n: h.releases() for n, h in world.hosts.items()}
    world.unhealthy("h3")
    res = world.fab("-H", "fleet", "deploy", "--ref", "fragile", "--batch", "2", "--max-fail", "0")
    assert res.returncode == 1, res.stdout + res.stderr
    now = world.serving()
    release = now["h1"]
    assert release != before["h1"] and now["h2"] == now["h4"] == release, res.stdout  # batch 1 kept; h4 with h3
    assert now["h3"] == before["h3"] and now["h5"] == before["h5"]  # failed host undone; batch 3 never started
    assert new_dirs(world, dirs)["h5"] == []  # its prepared release was taken back
    assert outcome(res.stdout) == {"h1": "success", "h2": "success", "h3": "rolled_back", "h4": "success",
                                   "h5": "skipped"}
    assert "batch 1/3: h1, h2" in res.stdout and "batch 2/3: h3, h4" in res.stdout and "batch 3/3" not in res.stdout
    assert f"serving: {release} on h1, h2, h4; {before['h3']} on h3, h5" in res.stdout
    assert world.hosts["h3"].health()["version"] == "v1" and world.hosts["h4"].health()["version"] == "fragile"

    history = ok(world.fab("-H", "fleet", "history"))
    assert re.search(r"^h3 .*DIFFERS", history, re.M) and re.search(r"^h5 .*DIFFERS", history, re.M)
    assert "not on the same release as the others" in history


def test_max_fail_one_tolerates_one_failed_host(clean):
    world = clean
    before = world.serving()
    world.unhealthy("h3")
    res = world.fab("-H", "fleet", "deploy", "--ref", "fragile", "--batch", "40%", "--max-fail", "1")
    assert res.returncode == 1, res.stdout + res.stderr  # a host was rolled back: the exit code says so
    now = world.serving()
    assert now["h3"] == before["h3"] and len({now[h] for h in ("h1", "h2", "h4", "h5")}) == 1 != now["h3"]
    assert outcome(res.stdout) == {"h1": "success", "h2": "success", "h3": "rolled_back", "h4": "success",
                                   "h5": "success"}
    assert "batch 3/3: h5" in res.stdout


def test_all_or_nothing_rolls_back_the_hosts_that_published(clean):
    world = clean
    before = world.serving()
    world.unhealthy("h2")
    res = world.fab("-H", "fleet", "deploy", "--ref", "fragile", "--all-or-nothing", "--parallel", "3")
    assert res.returncode == 1, res.stdout + res.stderr
    assert world.serving() == before
    assert set(outcome(res.stdout).values()) == {"rolled_back"}
    assert "--all-or-nothing: h2 failed" in res.stdout
    assert all(h.health()["version"] == world.hosts["h1"].health()["version"] for h in world.hosts.values())


def test_one_lock_held_changes_nothing_and_releases_every_other_lock(clean):
    world = clean
    before = world.serving()
    dirs = {n: h.releases() for n, h in world.hosts.items()}
    ok(world.fab("-H", "h4", "lock"))
    try:
        res = world.fab("-H", "fleet", "deploy", "--ref", "v2", "--skip-checks")
        assert res.returncode == errors.LOCK_HELD, res.stdout + res.stderr
        assert "deploy lock is held by" in res.stdout
        assert [n for n, h in world.hosts.items() if h.lock_held()] == ["h4"]
        assert world.serving() == before and new_dirs(world, dirs) == dict.fromkeys(HOSTS, [])
        status = outcome(res.stdout)
        assert status["h4"] == "locked" and {status[h] for h in HOSTS if h != "h4"} == {"skipped"}
    finally:
        ok(world.fab("-H", "h4", "unlock"))


def test_usage_errors_before_anything_connects(clean):
    for args in (["--batch", "0"], ["--batch", "x%"], ["--max-fail", "-1"], ["--parallel", "0"]):
        res = clean.fab("-H", "fleet", "deploy", "--ref", "v1", *args)
        assert res.returncode == errors.USAGE, res.stdout + res.stderr
        assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_sigterm_stops_every_host_at_a_step_boundary_and_undoes_it(clean):
    world = clean
    before = world.serving()
    dirs = {n: h.releases() for n, h in world.hosts.items()}
    proc = world.popen_fab("-H", "fleet", "deploy", "--ref", "v3")  # v3: new requirements, a slow venv build
    out = ""
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        out += line
        if re.match(r"\[h\d\] deploy_code +ok", line):
            proc.send_signal(signal.SIGTERM)
            break
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, out
    assert "SIGTERM" in out and "Traceback" not in out
    assert world.serving() == before and new_dirs(world, dirs) == dict.fromkeys(HOSTS, [])
    assert not any(h.lock_held() for h in world.hosts.values())
    assert all(h.health()["version"] == world.hosts["h1"].health()["version"] for h in world.hosts.values())


# ---------------------------------------------------------------- migrations once for the fleet

PG_TOML = """
[apps.sample.database]
engine = "postgresql"
migrate = "alembic upgrade head"
"""
PASSWORD = "fleet-Pw-7q"


def test_migrations_run_once_for_the_fleet_before_any_host_publishes(tmp_path, tmp_path_factory, wheelhouse):
    repo = migrations_repo(tmp_path_factory.mktemp("fleetdb"), {"v3": {"0004_broken.py": MIGRATION_0004.replace(
        'down_revision = "0003"', 'down_revision = "0002"')}})
    postgres = PostgreSQL.start()
    world = FleetWorld(tmp_path, wheelhouse, repo)
    try:
        url = postgres.create_database("fleet", "fleet", PASSWORD)
        world.extra_toml = PG_TOML
        for name in ("d1", "d2", "d3"):
            world.add_host(name, manager="pidfile")
            shared = world.hosts[name].deploy_to / "shared"
            shared.mkdir(parents=True)
            (shared / ".env").write_text(f"DATABASE_URL={url}\n")
        world.groups["db"] = ["d1", "d2", "d3"]
        world.write()
        world.inventory.write_text(world.inventory.read_text().replace("[hosts.d2]\n", "[hosts.d2]\nprimary = true\n"))

        out = ok(world.fab("-H", "db", "deploy", "--ref", "v2"))
        assert out.count("Running upgrade  -> 0001") == 1 and out.count("Running upgrade 0001 -> 0002") == 1
        assert re.search(r"^\[d2\] migrate +ok [\d.]+s \(`alembic upgrade head` ok", out, re.M), out
        assert re.search(r"^\[d1\] migrate +ok [\d.]+s \(skipped: migrations run once on d2", out, re.M)
        lines = out.splitlines()
        migrated = next(i for i, line in enumerate(lines) if line.startswith("[d2] migrate "))
        assert all(i > migrated for i, line in enumerate(lines) if re.match(r"\[d\d\] (boot_check|switch_release)", line))
        assert [n for n, h in world.hosts.items() if (h.deploy_to / "backups").exists()] == ["d2"]
        release = world.hosts["d1"].current()
        assert {h.current() for h in world.hosts.values()} == {release}

        res = world.fab("-H", "db", "deploy", "--ref", "v3")  # 0004 fails on the primary: nobody publishes
        assert res.returncode == 1, res.stdout + res.stderr
        assert "stopped: d2 failed in migrate before any host published" in res.stdout
        assert {h.current() for h in world.hosts.values()} == {release} and "switch_release" not in res.stdout
        assert not any(h.lock_held() for h in world.hosts.values())
    finally:
        world.stop()
        postgres.stop()
