"""The fault matrix (issue 7, item 8): the real `fab` CLI deploying over real sshd to
supervisor-managed gunicorn, frozen at an exact remote command (tests/faults.py), then hit
by a fault: the ssh link cut, the CLI signalled or killed, a full disk, a crashing or
hanging app, a taken port, a concurrent deploy or rollback. After each: what serves
matches the exit code, the lock is released or named, the release log is true, a re-run
succeeds, and no output holds a traceback. Every test owns its hosts (xdist-safe)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Host, World, git
from .faults import (
    BUSY,
    TAKING_THE_LOCK,
    FabProcess,
    Pauser,
    Truth,
    assert_no_traceback,
    assert_outcome,
    assert_serves,
    cut_link,
    leave_free,
    read_truth,
    silent_listener,
    wait_orphans,
)
from .services import DEFAULT_SESSION_ENV, Sshd, make_ssh_keys

pytestmark = pytest.mark.integration

CRASH_APP = 'raise RuntimeError("this release crashes at import")\n'
HANG_APP = (  # the tag `hang`: /health never answers
    '\n\nimport time as _time\napp.view_functions["health"] = lambda: _time.sleep(3600)\n'
)


@pytest.fixture(scope="module")
def fault_repo(app_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample app's repo plus tags on v2: `crash` (app.py raises at import) and `hang`
    (its /health never answers)."""
    repo = tmp_path_factory.mktemp("faultrepo")
    shutil.copytree(app_repo, repo, dirs_exist_ok=True)
    for tag, edit in (("crash", lambda app: CRASH_APP + app), ("hang", lambda app: app + HANG_APP)):
        git(repo, "checkout", "-q", "-b", tag, "v2")
        (repo / "app.py").write_text(edit((repo / "app.py").read_text()))
        (repo / "VERSION").write_text(f"{tag}\n")
        git(repo, "commit", "-q", "-am", tag)
        git(repo, "tag", tag)
        git(repo, "checkout", "-q", "main")
    return repo


@dataclass
class Rig:
    """One host with pause points, and the CLI pointed at it."""

    world: World
    host: Host
    pauser: Pauser

    def fab(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.world.fab("-H", self.host.name, *args)

    def start(self, *args: str) -> FabProcess:
        return FabProcess(self.world, "-H", self.host.name, *args)

    def ok(self, *args: str) -> str:
        res = self.fab(*args)
        assert res.returncode == 0, f"fab {' '.join(args)}: exit {res.returncode}\n{res.stdout}\n{res.stderr}"
        assert_no_traceback(res.stdout, res.stderr)
        return res.stdout

    def baseline(self, *refs: str) -> Truth:
        """Deploy `refs` in turn; the host's truth after the last."""
        for ref in refs:
            self.ok("deploy", "--ref", ref)
        return read_truth(self.host)

    def recover(self, res: subprocess.CompletedProcess[str]) -> None:
        """What a person does after exit 2: run the command it names when the lock is left."""
        if res.returncode == 2 and self.host.lock_held():
            self.ok("unlock")

    def rerun(self, ref: str, version: str) -> None:
        """A plain re-run of the deploy succeeds and serves `version`."""
        self.ok("deploy", "--ref", ref)
        assert_serves(self.host, self.host.current(), version)
        assert read_truth(self.host).lock is None


@pytest.fixture
def rig(tmp_path: Path, wheelhouse: Path, fault_repo: Path) -> Iterator[Rig]:
    world = World(tmp_path, wheelhouse, fault_repo)
    pauser = Pauser(tmp_path / "faults")
    try:
        host = world.add_host("web1", manager="supervisor")
        pauser.install(host.sshd)
        yield Rig(world, host, pauser)
    finally:
        pauser.release_all()
        world.stop()


# ------------------------------------------------------------------ the pause point itself


def test_pause_point_freezes_a_command_and_a_cut_link_leaves_it_running(tmp_path: Path) -> None:
    """The infrastructure: a flock-wrapped command pauses while holding the lock; the cut link
    drops the client, the orphan finishes once released, and holds `busy` until then."""
    pauser = Pauser(tmp_path / "faults")
    with Sshd.start(tmp_path / "sshd", make_ssh_keys(tmp_path / "keys"), session_env=dict(DEFAULT_SESSION_ENV)) as sshd:
        pauser.install(sshd)
        busy, done = tmp_path / "busy", tmp_path / "done"
        pauser.arm("flock", r"touch .*/done")
        client = subprocess.Popen(sshd.ssh_command(f"flock -w 30 {busy} bash -c 'touch {done}; echo written'"),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        paused = pauser.wait_paused(timeout=30)
        assert "touch" in paused.args and not done.exists()
        assert subprocess.run(["flock", "-n", str(busy), "true"]).returncode == 1  # held while paused
        assert cut_link(sshd) >= 1
        assert client.wait(10) != 0  # the client saw the link drop
        pauser.release(paused)
        assert subprocess.run(["flock", "-w", "20", str(busy), "true"]).returncode == 0
        assert done.exists()  # the orphan went on and finished
        # a rule fires once; an unmatched command runs untouched
        res = subprocess.run(sshd.ssh_command(f"flock {busy} touch {done}2 && mkdir {tmp_path}/d && echo ok"),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        assert res.stdout.strip() == "ok" and (tmp_path / "d").is_dir()


# ------------------------------------------------------------------ a cut ssh link, step by step


@dataclass(frozen=True)
class Cut:
    """Where to cut: the shimmed command(s), the regex on its arguments, the pause mode,
    the refs (baseline, then the faulted deploy) and the exit codes the spec allows."""

    commands: str
    pattern: str
    mode: str
    codes: tuple[int, ...] = (1, 2)
    refs: tuple[str, str] = ("v1", "v2")
    health_via_host: bool = False
    makes_release: bool = True  # False: the release id is chosen only once the lock is held
    orphan_late: float = 0.0  # seconds the orphan stays paused after the cut (the client has reconnected by then)


CUTS = {
    # right after `mkdir .shipfab/lock`, before owner.json and the state come back
    "lock": Cut("mkdir", r"/\.shipfab/lock$", "after", makes_release=False),
    # the same, and the orphan writes owner.json only after the client has reconnected to check it
    "lock_orphan_late": Cut("mkdir", r"/\.shipfab/lock$", "after", makes_release=False, orphan_late=1.5),
    "code": Cut("flock", r"tar -?x", "inside"),
    "pip": Cut("flock", r"-m venv", "inside", refs=("v2", "v3")),  # v3 changes requirements: a venv is built
    "switch": Cut("flock", r"mv -T", "inside"),
    "restart": Cut("flock", r"supervisorctl", "inside"),
    # the health probe as curl on the host: a cut may be retried (0) or undone (1)
    "health": Cut("curl", r"--config -", "before", codes=(0, 1, 2), health_via_host=True),
    "log": Cut("flock", r"releases\.jsonl", "inside", codes=(0, 1, 2)),
    # the lock's removal, whichever command does it
    "unlock": Cut("rm rmdir", r"\.shipfab/lock(/owner\.json)?/?$", "before", codes=(0, 1, 2)),
}
VERSION = {"v1": "v1", "v2": "v2", "v3": "v3"}


@pytest.mark.parametrize("step", list(CUTS))
def test_link_cut_during_step(rig: Rig, step: str) -> None:
    cut = CUTS[step]
    old_ref, new_ref = cut.refs
    if cut.health_via_host:
        rig.host.health_via = "host"
        rig.world.write()
    before = rig.baseline(old_ref)

    rig.pauser.arm(cut.commands, cut.pattern, cut.mode)
    fab = rig.start("deploy", "--ref", new_ref)
    paused = rig.pauser.wait_paused(fab)
    assert cut_link(rig.host.sshd) >= 1
    time.sleep(cut.orphan_late)
    rig.pauser.release(paused)  # the orphan goes on: the undo must wait for it (flock busy)
    res = fab.wait()

    assert res.returncode in cut.codes, res.stdout
    assert_outcome(rig.host, res, before, old=VERSION[old_ref], new=VERSION[new_ref], names_release=cut.makes_release)
    rig.recover(res)
    rig.rerun(new_ref, VERSION[new_ref])


# ------------------------------------------------------------------ signals to the CLI


AT = {
    "pip_sync": ("flock", r"-m venv"),
    "restart": ("flock", r"supervisorctl"),
}


@pytest.mark.parametrize("at", list(AT))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_undo_like_ctrl_c(rig: Rig, at: str, sig: signal.Signals) -> None:
    before = rig.baseline("v2")
    rig.pauser.arm(*AT[at])
    fab = rig.start("deploy", "--ref", "v3")
    paused = rig.pauser.wait_paused(fab)
    fab.signal(sig)
    rig.pauser.release(paused)
    res = fab.wait()

    assert res.returncode == 1, res.stdout
    assert_outcome(rig.host, res, before, old="v2", new="v3")
    rig.rerun("v3", "v3")


@pytest.mark.parametrize("at", list(AT))
def test_second_ctrl_c_during_the_undo_does_not_abandon_it(rig: Rig, at: str) -> None:
    before = rig.baseline("v2")
    rig.pauser.arm(*AT[at])
    fab = rig.start("deploy", "--ref", "v3")
    first = rig.pauser.wait_paused(fab)
    rig.pauser.arm("flock", BUSY)  # after the Ctrl-C, the next host change is the undo's
    fab.signal(signal.SIGINT)
    rig.pauser.release(first)
    undoing = rig.pauser.wait_paused(fab)
    fab.signal(signal.SIGINT)
    rig.pauser.release(undoing)
    res = fab.wait()

    assert res.returncode == 1, res.stdout
    assert_outcome(rig.host, res, before, old="v2", new="v3")
    rig.rerun("v3", "v3")


@pytest.mark.parametrize("at", list(AT))
def test_sigkill_leaves_a_named_stale_lock_and_a_release_never_used(rig: Rig, at: str) -> None:
    before = rig.baseline("v2")
    rig.pauser.arm(*AT[at])
    fab = rig.start("deploy", "--ref", "v3")
    paused = rig.pauser.wait_paused(fab)
    fab.signal(signal.SIGKILL)
    killed = fab.wait()
    rig.pauser.release(paused)
    assert killed.returncode == -signal.SIGKILL
    owner = read_truth(rig.host).lock
    assert owner is not None and owner.get("pid") == fab.pid, owner
    wait_orphans(rig.host)
    stale = read_truth(rig.host)  # whatever the orphan got to do: the refused deploy must not change it
    half = set(stale.releases) - set(before.releases)

    res = rig.fab("deploy", "--ref", "v3")
    assert res.returncode == 3, res.stdout
    assert str(fab.pid) in res.stdout and "not running" in res.stdout, res.stdout
    assert f"fab -H {rig.host.name} unlock" in res.stdout
    assert_no_traceback(res.stdout, res.stderr)
    assert read_truth(rig.host) == stale

    rig.ok("unlock")
    rig.rerun("v3", "v3")
    truth = read_truth(rig.host)
    assert all(truth.log.get(r, {}).get("status") != "success" for r in half), truth.log
    rig.ok("rollback")  # the half-built release is never the target: the last good one is
    assert_serves(rig.host, before.current, "v2")


LOCK_HALF_TAKEN = ("mkdir", r"/\.shipfab/lock$", "after")  # the lock command: lock made, owner.json not yet written


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_while_taking_the_lock_leaves_it_free(rig: Rig, sig: signal.Signals) -> None:
    """The CLI is told to stop while its lock command is half way (holding the .shipfab/ flock):
    its release waits for that command, finds its own token, and removes the lock. Nothing changed."""
    before = rig.baseline("v2")
    rig.pauser.arm(*LOCK_HALF_TAKEN)
    fab = rig.start("deploy", "--ref", "v3")
    paused = rig.pauser.wait_paused(fab)
    fab.signal(sig)
    time.sleep(1.0)  # the release is waiting on the flock by now
    rig.pauser.release(paused)
    res = fab.wait()

    assert res.returncode == 1, res.stdout
    assert "nothing changed" in res.stdout, res.stdout
    assert_outcome(rig.host, res, before, old="v2", new="v3", names_release=False)
    rig.rerun("v3", "v3")


def test_sigkill_while_taking_the_lock_leaves_a_named_stale_lock(rig: Rig) -> None:
    """The CLI killed while its lock command is half way: the command, orphaned, finishes the lock;
    the next deploy names the dead holder and changes nothing; after `unlock` a deploy works."""
    before = rig.baseline("v2")
    rig.pauser.arm(*LOCK_HALF_TAKEN)
    fab = rig.start("deploy", "--ref", "v3")
    paused = rig.pauser.wait_paused(fab)
    fab.signal(signal.SIGKILL)
    assert fab.wait().returncode == -signal.SIGKILL
    rig.pauser.release(paused)
    meta = rig.host.deploy_to / ".shipfab"
    assert subprocess.run(["flock", "-w", "30", str(meta), "true"]).returncode == 0  # the orphan has ended
    owner = read_truth(rig.host).lock
    assert owner is not None and owner.get("pid") == fab.pid, owner

    res = rig.fab("deploy", "--ref", "v3")
    assert res.returncode == 3, res.stdout
    assert str(fab.pid) in res.stdout and "not running" in res.stdout, res.stdout
    assert_outcome(rig.host, res, before, old="v2", new="v3", names_release=False)
    rig.ok("unlock")
    rig.rerun("v3", "v3")


# ------------------------------------------------------------------ the host itself misbehaves


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("skip_checks", [False, True], ids=["checks", "skip-checks"])
def test_full_disk(rig: Rig, skip_checks: bool) -> None:
    root = rig.host.deploy_to
    root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(root)], check=True)
    try:
        rig.world.extra_toml = "[apps.sample.preflight]\nmin_disk_mb = 1\nmin_disk_percent = 0"
        rig.world.write()
        before = rig.baseline("v2")
        filler = leave_free(root, 256 * 1024)  # room for the lock and the log, not for a new venv
        res = rig.fab("deploy", "--ref", "v3", *(["--skip-checks"] if skip_checks else []))
        if skip_checks:
            assert res.returncode == 1, res.stdout
        else:
            assert res.returncode == 4 and "disk" in res.stdout, res.stdout
        assert_outcome(rig.host, res, before, old="v2", new="v3")
        filler.unlink()
        rig.rerun("v3", "v3")
    finally:
        rig.world.stop()  # nothing may keep the mount busy
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_app_that_crashes_at_import_is_undone(rig: Rig) -> None:
    before = rig.baseline("v1")
    res = rig.fab("deploy", "--ref", "crash")
    assert res.returncode == 1, res.stdout
    assert_outcome(rig.host, res, before, old="v1", new="crash")
    rig.rerun("v2", "v2")


def test_port_already_taken_before_the_first_deploy(rig: Rig) -> None:
    before = read_truth(rig.host)
    with silent_listener(rig.host.port):
        res = rig.fab("deploy", "--ref", "v1")
        assert res.returncode in (2, 4), res.stdout
        assert str(rig.host.port) in res.stdout, res.stdout
        assert_no_traceback(res.stdout, res.stderr)
        assert read_truth(rig.host).lock is None
        if res.returncode == 4:
            assert_outcome(rig.host, res, before, old="", new="v1")
    rig.rerun("v1", "v1")


def test_health_url_that_hangs_fails_within_the_timeout(rig: Rig) -> None:
    health_timeout = 6
    rig.world.inventory.write_text(rig.world.inventory.read_text().replace("timeout = 15", f"timeout = {health_timeout}"))
    before = rig.baseline("v1")
    started = time.monotonic()
    res = rig.fab("deploy", "--ref", "hang")
    took = time.monotonic() - started
    assert res.returncode == 1, res.stdout
    assert took < health_timeout + 5 + 25, f"took {took:.1f}s"  # + one request timeout + deploy and undo
    assert_outcome(rig.host, res, before, old="v1", new="hang")
    rig.rerun("v2", "v2")


# ------------------------------------------------------------------ concurrent runs


def test_second_deploy_while_the_first_holds_the_lock_exits_3(rig: Rig) -> None:
    before = rig.baseline("v1")
    rig.pauser.arm("flock", BUSY)  # the first deploy's first change: it holds the deploy lock
    first = rig.start("deploy", "--ref", "v2")
    paused = rig.pauser.wait_paused(first)
    second = rig.fab("deploy", "--ref", "v2")
    assert second.returncode == 3, second.stdout
    assert str(first.pid) in second.stdout, second.stdout
    assert read_truth(rig.host).releases == before.releases  # the refused deploy made nothing
    rig.pauser.release(paused)
    res = first.wait()
    assert res.returncode == 0, res.stdout
    assert_outcome(rig.host, res, before, old="v1", new="v2")
    assert_no_traceback(second.stdout, second.stderr)


@pytest.mark.parametrize("first", ["deploy", "rollback"])
def test_deploy_racing_a_rollback_the_later_exits_3(rig: Rig, first: str) -> None:
    before = rig.baseline("v1", "v2")
    v1_release = sorted(before.releases)[0]
    if first == "deploy":
        rig.pauser.arm("flock", BUSY)
        runner = rig.start("deploy", "--ref", "v3")
        later = ("rollback",)
    else:
        rig.pauser.arm("flock", r"mv -T")
        runner = rig.start("rollback")
        later = ("deploy", "--ref", "v3")
    paused = rig.pauser.wait_paused(runner)
    res = rig.fab(*later)
    assert res.returncode == 3, res.stdout
    assert_no_traceback(res.stdout, res.stderr)
    rig.pauser.release(paused)
    done = runner.wait()
    assert done.returncode == 0, done.stdout
    assert_no_traceback(done.stdout)
    truth = read_truth(rig.host)
    if first == "deploy":
        assert_serves(rig.host, truth.current, "v3")
        assert truth.log[before.current]["status"] == "success"  # the refused rollback changed nothing
    else:
        assert_serves(rig.host, v1_release, "v1")  # and nothing reverted it
        assert truth.log[before.current]["status"] == "rolled_back"
    assert truth.lock is None


def test_rollback_goes_to_the_release_that_served_before(rig: Rig) -> None:
    v1 = rig.baseline("v1").current
    rig.ok("deploy", "--ref", "v2")
    v2 = rig.host.current()
    rig.ok("rollback")
    assert_serves(rig.host, v1, "v1")
    rig.ok("deploy", "--ref", "v3")
    v3 = rig.host.current()
    out = rig.ok("rollback")
    assert_serves(rig.host, v1, "v1")  # not v2: it was rolled back
    log = read_truth(rig.host).log
    assert log[v2]["status"] == log[v3]["status"] == "rolled_back", log
    assert log[v3].get("rolled_back_to") == v1, (log, out)


def test_state_is_read_under_the_lock_not_before(rig: Rig) -> None:
    """A deploy frozen between its start and its lock while another deploys from start to end:
    once it gets the lock it sees the other's release as current, never reuses its id, and
    reverts nothing."""
    rig.baseline("v1")
    rig.pauser.arm("flock", TAKING_THE_LOCK, "before")
    late = rig.start("deploy", "--ref", "v3")
    paused = rig.pauser.wait_paused(late)
    rig.ok("deploy", "--ref", "v2")
    middle = rig.host.current()
    rig.pauser.release(paused)
    res = late.wait()
    assert res.returncode == 0, res.stdout
    truth = assert_serves(rig.host, rig.host.current(), "v3")
    assert truth.current != middle and truth.log[middle]["status"] == "success", truth.log
    assert truth.log[truth.current]["previous"] == middle, truth.log[truth.current]
    assert truth.lock is None
