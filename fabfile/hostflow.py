"""One host: lock (reading the state in the same round trip) -> the stack's steps, each
registering its undo before it changes anything -> on failure the undos in reverse ->
log -> prune -> unlock.

A fleet runs a host's steps in parts (`plan`: the segments before publishing, then publish +
verify); the undo list lives on the HostRun across the parts, so a host can still be undone
after all of its steps ran (--all-or-nothing, or a stop before its batch published).

Undos run on a fresh connection, under the host's busy flock (a command orphaned by a
dropped link finishes first), shielded from further signals, and each decides from the
host as it finds it. Exit codes: see errors.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from . import errors, signals
from .context import HostRun, HostState
from .db import DatabaseNotRestored, handles_database
from .errors import LockHeld, ManualAction, ShipfabError
from .parallel import Stop
from .release import who
from .remote import ConnectionLost, HostKeyRejected, Unreachable
from .stacks import stack_for
from .stacks.base import Step
from .steps import lock, release_log
from .steps.backup_db import SUFFIXES
from .steps.prune import prune_cmd


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cause_of(exc: BaseException) -> str:
    if isinstance(exc, signals.Interrupted):
        return f"interrupted ({exc.name})"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(exc, ShipfabError):
        return str(exc) or type(exc).__name__
    return f"internal error: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- lock


def take_lock(run: HostRun, what: str, facts: str = "") -> str:
    """Take the deploy lock and read the host's state into `run.state`; returns the facts
    output. On failure the run is marked (locked / preflight_failed / failed) and "" returned."""
    owner = lock.owner_record(what)
    run.lock_token = str(owner["token"])
    facts_out: list[str] = []

    def acquire() -> str:
        run.state, out = lock.acquire_and_read(run.remote, run.layout, owner, facts)
        facts_out.append(out)
        return f"state read under the lock: current {run.state.current or '(none)'}"

    try:
        run.timed("lock", acquire, level=2)  # in the timing table; a usage error after it prints one line
    except LockHeld as exc:
        run.lock_token = ""
        run.fail("locked", exc.exit_code, str(exc))
        return ""
    except (Unreachable, HostKeyRejected) as exc:
        run.lock_token = ""
        run.fail("preflight_failed", errors.PREFLIGHT_FAILED, f"pre-flight failed, nothing changed: {exc}")
        return ""
    except (ShipfabError, KeyboardInterrupt) as exc:
        # The command may have run: look, and take back a lock that turns out to be ours.
        run.fail("failed", errors.FAILED_ROLLED_BACK, f"nothing changed: {cause_of(exc)}")
        with signals.shielded("checking the deploy lock"):
            unlock(run)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return ""
    run.remote.busy = f"{run.layout.meta}/busy"
    return facts_out[0]


def unlock(run: HostRun) -> None:
    """Release the lock this run took (never another run's); a host that cannot be reached
    gets the exact command in the outcome (exit 2)."""
    if not run.lock_token:
        return
    try:
        try:
            answer = lock.release(run.remote, run.layout, run.lock_token)
        except ConnectionLost:
            run.remote.reconnect()
            answer = lock.release(run.remote, run.layout, run.lock_token)
    except ShipfabError as exc:
        msg = (f"the deploy lock may still be held ({exc}); once the host is reachable, check it and run: "
               f"fab -H {run.host} unlock")
        run.printer.error(msg, run.host)
        run.reason = f"{run.reason}; {msg}" if run.reason else msg
        if run.code in (errors.OK, errors.FAILED_ROLLED_BACK):
            run.code = errors.FAILED_MANUAL_ACTION
        return
    run.lock_token = ""
    if answer == "NOT_OURS":
        run.printer.line("warning: the deploy lock was taken over by another run; left it alone", run.host, level=0)


# ---------------------------------------------------------------- steps and undo


PUBLISHING = ("publish", "verify")


def plan(steps: tuple[Step, ...] | list[Step]) -> tuple[list[list[Step]], list[Step]]:
    """A host's steps for a fleet: the segments before its first publish/verify step (a new
    segment at each change of phase: the fleet waits for every host between two, so the
    primary's migrations finish before any host's next step), and the rest (per batch)."""
    cut = next((i for i, s in enumerate(steps) if s.phase in PUBLISHING), len(steps))
    segments: list[list[Step]] = []
    for step in steps[:cut]:
        if segments and segments[-1][-1].phase == step.phase:
            segments[-1].append(step)
        else:
            segments.append([step])
    return segments, list(steps[cut:])


def run_steps(run: HostRun, steps: tuple[Step, ...] | list[Step], stop: Stop | None = None) -> BaseException | None:
    """Run the steps in order (asking `stop` before each: a fleet stops its hosts at a step
    boundary); on failure undo everything registered so far, in earlier calls too. Returns
    what stopped them (None: all ran). A KeyboardInterrupt is returned too, after the undo."""
    try:
        for step in steps:
            if stop is not None:
                stop.check()
            run.timed(step.name, lambda step=step: step.run(run))
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure is undone, then reported
        undo(run, cause_of(exc))
        return exc
    return None


def undo(run: HostRun, cause: str) -> None:
    """Run the registered undos in reverse on a fresh connection; mark the outcome. With none
    registered nothing was changed: the outcome is `failed`, the cause alone, and no reconnect."""
    with signals.shielded("undoing the failed change"):
        if not run.undos:  # a read-only command (db-check, health-check) or a step that failed before its first change
            run.printer.line(f"failed: {cause}", run.host, level=0)
            run.fail("failed", errors.FAILED_ROLLED_BACK, cause)
            return
        run.printer.line(f"undo: {cause}", run.host, level=0)
        if run.options.dry_run:
            run.fail("failed", errors.FAILED_ROLLED_BACK, f"dry run stopped: {cause}")
            return
        try:
            run.remote.reconnect()
        except ShipfabError as exc:
            run.fail("failed", errors.FAILED_MANUAL_ACTION,
                     f"{cause}. The host could not be reached to undo ({exc}): once it is, check it with "
                     f"fab -H {run.host} releases, then rollback or unlock")
            return
        problems, details = [], []
        for step in reversed(run.undos):
            try:
                detail = run.timed(f"undo_{step.name}", step.run)
            except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the other undos still run
                problems.append(f"{step.name}: {cause_of(exc)}")
                if isinstance(exc, DatabaseNotRestored | ManualAction):
                    continue
            else:
                if detail:
                    details.append(detail)
        run.undos.clear()
        if problems:
            run.fail("failed", errors.FAILED_MANUAL_ACTION, with_notes(
                f"{cause}. The undo could not finish, manual action needed: {'; '.join(problems)}.", run.notes))
            return
        back = next((d for d in details if d.startswith("current -> ")), "")
        where = f"{back.split()[2]} is serving again" if back else "nothing went live"
        run.fail("rolled_back", errors.FAILED_ROLLED_BACK, with_notes(f"{where}. {cause}", run.notes))


def with_notes(text: str, notes: list[str]) -> str:
    """`text` and the undo's notes: on lines of their own when `text` ends in an output tail (several lines)."""
    sep = "\n" if "\n" in text else " "
    return text + "".join(sep + n for n in notes)


# ---------------------------------------------------------------- finish


def deploy_entry(run: HostRun, started: str) -> dict[str, Any]:
    release = run.release
    return {
        "release": release.id,
        "event": "deploy",
        "status": "success" if run.status == "success" else "failed",
        "revision": release.revision,
        "ref": release.ref,
        "user": who(),
        "host": run.host,
        "started": started,
        "finished": now(),
        "previous": release.previous,
        "backup": release.backup or None,
        "backup_at": release.backup_at or None,
        "backup_skipped": run.options.skip_backup,
        "migrated": release.migrated,
        "preflight": "skipped (--skip-checks)" if run.options.skip_checks else "passed",
        "timings": {k: round(v, 3) for k, v in run.timings.items()},
        "reason": run.reason,
        **({"message": run.options.message} if run.options.message else {}),
        **({"kind": run.options.kind} if run.options.kind else {}),
        **release.record,
    }


def prune_plan(run: HostRun, entry: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(release ids, snapshot files) to remove once `entry` is logged, decided from the log."""
    after = HostState(current=run.release.id if run.status == "success" else run.state.current,
                      releases=tuple(sorted({*run.state.releases, run.release.id})),
                      events=(*run.state.events, entry), snapshots=run.state.snapshots)
    doomed = release_log.releases_to_prune(after, run.app.keep_releases)
    db = run.app.database
    if db is None or not handles_database(run.target, run.primary):
        return doomed, []
    suffix = SUFFIXES[db.engine]
    kept = [r for r in after.releases if r not in doomed]
    snaps = release_log.snapshots_to_prune(after, kept, suffix, db.keep_backups)
    return doomed, [s + suffix for s in snaps]


def finish(run: HostRun, events: list[dict[str, Any]], prune: bool) -> None:
    """Log (and prune), then unlock: one round trip. Never raises."""
    if run.options.dry_run:
        return
    with signals.shielded("writing the release log"):
        masked = [mask(run, e) for e in events]
        body = " && ".join(release_log.append_cmd(run.layout, e) for e in masked)
        detail = "logged"
        if prune:
            releases, snapshots = prune_plan(run, masked[0])
            body += "\n" + prune_cmd(run.layout, releases, snapshots)
            extra = stack_for(run.app.stack).prune
            body += f"\n{extra(run.app, releases)}" if extra and releases else ""
            detail = f"logged; pruned {len(releases)} release(s)" + (f", {len(snapshots)} snapshot(s)" if snapshots else "")
        script = f"{run.remote.serialized(body)}\nrc=$?\n{lock.release_cmd(run.layout, run.lock_token)}\nexit $rc"
        try:
            run.timed("finish", lambda: _finish(run, script, detail))
        except (ShipfabError, OSError) as exc:
            run.printer.line(f"warning: could not write the release log / prune: {exc}", run.host, level=0)
        unlock(run)


def _finish(run: HostRun, script: str, detail: str) -> str:
    out = run.remote.run(script, serialize=False).stdout
    if "RELEASED" in out.split():
        run.lock_token = ""
        return detail + "; unlocked"
    return detail


def mask(run: HostRun, entry: dict[str, Any]) -> dict[str, Any]:
    """Known secrets masked inside the values, before the entry is serialized."""
    return run.printer.redact.mask_data(entry)
