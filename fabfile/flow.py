"""Runs a stack's steps on one host or a fleet: lock, timing, undo on failure, health
gate, release log, prune, unlock, and one summary with one exit code.

Hosts run one after another (a fleet shares one release id). A host that fails is
rolled back and the hosts after it are not touched.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import dbflow, errors, notify
from .db import DatabaseNotRestored, primary, primary_first
from .errors import LockHeld, PreflightFailed, ShipfabError, UsageError
from .inventory import App, Target
from .layout import Layout
from .output import Printer, table
from .release import Release, new_release_id, who
from .remote import ConnectionLost, HostKeyRejected, Remote
from .stacks import stack_for
from .stacks.base import Stack
from .steps import lock, prune, release_log
from .steps.deploy_code import local_revision
from .steps.env_file import read_remote_env
from .steps.health_check import health_url
from .steps.host_state import HostState, read_state
from .steps.preflight import Check, run_checks
from .steps.rollback import rollback_target
from .steps.switch_release import switch_release


@dataclass(frozen=True)
class Options:
    ref: str | None = None
    dry_run: bool = False
    full_restart: bool = False
    verbosity: int = 1
    skip_checks: bool = False
    skip_backup: bool = False
    json_path: str | None = None


@dataclass
class HostRun:
    """One host's part of a run: its connection, its release, its timings and outcome."""

    target: Target
    remote: Remote
    printer: Printer
    options: Options
    release: Release = field(default_factory=lambda: Release(id="", ref=""))
    state: HostState = field(default_factory=lambda: HostState(current="", releases=()))
    timings: dict[str, float] = field(default_factory=dict)
    status: str = "pending"
    code: int = errors.OK
    reason: str = ""
    failed_step: str = ""
    primary: str = ""  # the host that backs up / migrates a shared database in this run
    checks: list[Check] = field(default_factory=list)

    @property
    def app(self) -> App:
        return self.target.app

    @property
    def layout(self) -> Layout:
        return Layout(self.target.app.deploy_to)

    @property
    def stack(self) -> Stack:
        return stack_for(self.target.app.stack)

    def timed(self, name: str, fn: Callable[[], str | None]) -> str | None:
        """Run one step, print `[host] step ok 0.12s (detail)` or FAILED, record the time."""
        started = time.monotonic()
        try:
            detail = fn()
        except BaseException:
            elapsed = self.timings[name] = time.monotonic() - started
            self.printer.line(f"{name:<15} FAILED {elapsed:.2f}s", self.remote.host, level=0)
            self.failed_step = self.failed_step or name
            raise
        elapsed = self.timings[name] = time.monotonic() - started
        suffix = f" ({detail})" if detail else ""
        self.printer.line(f"{name:<15} ok {elapsed:.2f}s{suffix}", self.remote.host)
        return detail

    def fail(self, status: str, code: int, reason: str) -> None:
        self.status, self.code, self.reason = status, code, reason


def make_runs(targets: list[Target], printer: Printer, options: Options) -> list[HostRun]:
    first = primary(targets).name if targets else ""
    return [HostRun(t, Remote(t, printer, options.dry_run), printer, options, primary=first) for t in targets]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------- deploy


def deploy(targets: list[Target], printer: Printer, options: Options) -> int:
    """Deploy `options.ref` to every target under one release id; returns the exit code.
    The primary host goes first: its migrations run before any host switches."""
    runs = make_runs(primary_first(targets), printer, options)
    started = time.monotonic()
    release_id = ""
    reading: HostRun | None = None  # the host being read when an error comes
    try:
        for reading in runs:
            try:
                reading.state = read_state(reading.remote, reading.layout)
                read_remote_env(reading.remote, reading.layout)  # its values are masked in all output from now on
            except (ConnectionLost, HostKeyRejected) as exc:
                raise PreflightFailed(f"pre-flight failed, nothing changed: {exc}") from None
            if not reading.app.repo:  # a ref that does not exist is a usage error, found before anything changes
                local_revision(reading.app.checkout, options.ref or reading.app.branch)
        reading = None
        release_id = new_release_id([r for run in runs for r in run.state.releases])
        printer.line(f"release {release_id}{' (dry run: nothing will change)' if options.dry_run else ''}")
        if not preflight_passed(runs, printer, options):
            return summarize(runs, printer, "deploy")
        _notify(runs, "start", release_id, started)
        for i, run in enumerate(runs):
            run.release = Release(id=release_id, ref=options.ref or run.app.branch, previous=run.state.current)
            interrupted = _deploy_host(run)
            if run.code != errors.OK or interrupted:
                for later in runs[i + 1:]:
                    later.fail("skipped", errors.OK, "not started: an earlier host failed")
                break
    except ShipfabError as exc:
        failed = reading or next((r for r in runs if r.status == "pending"), runs[0])
        failed.fail("preflight_failed" if isinstance(exc, PreflightFailed) else "failed", exc.exit_code, str(exc))
    finally:
        for run in runs:
            run.remote.close()
    code = summarize(runs, printer, "deploy")
    if release_id:
        _notify(runs, "success" if code == errors.OK else "failure", release_id, started)
    return code


def preflight_passed(runs: list[HostRun], printer: Printer, options: Options, always_show: bool = False) -> bool:
    """Run the pre-flight checks of every host and print them; False (hosts marked) on any failure."""
    if options.skip_checks:
        printer.line("pre-flight checks skipped (--skip-checks)", level=0)
        for run in runs:
            run.checks = [Check("preflight", True, "skipped (--skip-checks)")]
        return True
    for run in runs:
        run.checks = run_checks(run.remote, run.target, options.ref)
        if options.dry_run:  # nobody holds the lock a dry run would take
            run.checks = [c for c in run.checks if c.name != "lock" or c.ok]
    print_checks(runs, printer, always_show)
    bad = [run for run in runs if not all(c.ok for c in run.checks)]
    for run in bad:
        failed = [c for c in run.checks if not c.ok]
        if [c.name for c in failed] == ["lock"]:  # only the lock: the same answer the lock step gives
            holder = failed[0].detail.removeprefix("held by ")
            run.fail("locked", errors.LOCK_HELD, lock.held_message(run.remote.host, holder))
            continue
        detail = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        run.fail("preflight_failed", errors.PREFLIGHT_FAILED, f"pre-flight failed, nothing changed: {detail}")
    for run in runs:
        if bad and run not in bad:
            run.fail("skipped", errors.OK, "not started: pre-flight failed (or lock held) on another host")
    return not bad


def print_checks(runs: list[HostRun], printer: Printer, always_show: bool = False) -> None:
    """The checks table: shown when something failed (or asked for), else only at normal verbosity."""
    rows = [[c.name, run.remote.host, "ok" if c.ok else "FAIL", c.detail] for run in runs for c in run.checks]
    failed = any(r[2] == "FAIL" for r in rows)
    printer.line(table(["check", "host", "result", "detail"], rows), level=0 if failed or always_show else 1)


def _notify(runs: list[HostRun], event: str, release_id: str, started: float) -> None:
    """One webhook message for the whole run (the first app's settings; hosts of a group share an app)."""
    if not runs or runs[0].options.dry_run:
        return
    failed = next((r for r in runs if r.code != errors.OK), None)
    info = {
        "app": runs[0].app.name,
        "hosts": [r.remote.host for r in runs],
        "release": release_id,
        "revision": next((r.release.revision for r in runs if r.release.revision), ""),
        "user": who(),
        "duration": None if event == "start" else round(time.monotonic() - started, 3),
        "status": {r.remote.host: r.status for r in runs},
    }
    if failed is not None and event != "start":
        info.update(failed_step=failed.failed_step or failed.status, reason=" ".join(failed.reason.split())[:300])
    notify.send(runs[0].app.notify, event, info, runs[0].printer)


def _deploy_host(run: HostRun) -> bool:
    """Deploy on one host; fills run.status/code/reason. Returns True when interrupted."""
    layout, release = run.layout, run.release
    started = _now()
    try:
        run.timed("lock", lambda: lock.acquire(run.remote, layout, release.ref))
    except LockHeld as exc:
        run.fail("locked", exc.exit_code, str(exc))
        return False
    except ShipfabError as exc:
        run.fail("failed", errors.FAILED_ROLLED_BACK, f"nothing changed: {exc}")
        return False
    interrupted = False
    try:
        try:
            for step in run.stack.deploy_steps:
                run.timed(step.name, lambda step=step: step.run(run))
        except BaseException as exc:  # Ctrl-C included: undo, then report
            interrupted = isinstance(exc, KeyboardInterrupt)
            if not isinstance(exc, (ShipfabError, KeyboardInterrupt)):
                raise
            _undo(run, _reason(exc))
            if isinstance(exc, DatabaseNotRestored):
                run.fail("failed", exc.exit_code, run.reason)
        else:
            run.status = "success"
            run.reason = f"serving; health {health_url(run.app.health, run.target)}"
        _finish(run, started)
    finally:
        _unlock(run)
    return interrupted


def _undo(run: HostRun, reason: str) -> None:
    """Put the host back as it was: switch back + reload, drop the failed release."""
    release, layout = run.release, run.layout
    run.printer.line(f"undo: {reason}", run.remote.host, level=0)
    reason += dbflow.undo_note(run)
    try:
        if release.switched and release.previous:
            run.timed("undo_switch", lambda: switch_release(run.remote, layout, release.previous) or release.previous)
            run.timed("undo_activate", lambda: run.stack.activate(run, release.previous))
        elif release.switched:
            run.fail("failed", errors.FAILED_MANUAL_ACTION,
                     f"first release on the host, nothing to switch back to: fix the app and deploy again. {reason}")
            return
        run.remote.run(f"rm -rf -- {shlex.quote(layout.release(release.id))}")
        where = f"{release.previous} is serving again" if release.switched else "nothing was switched"
        run.fail("rolled_back", errors.FAILED_ROLLED_BACK, f"{where}. {reason}")
    except (ShipfabError, OSError) as exc:
        run.fail("failed", errors.FAILED_MANUAL_ACTION,
                 f"the undo failed too, manual action needed: check `current` and the app on {run.remote.host} "
                 f"(fab -H {run.remote.host} releases / rollback). Undo: {exc}. Cause: {reason}")


def _finish(run: HostRun, started: str) -> None:
    """Log the release (success or failure) and prune after a success; never raises."""
    release = run.release
    entry = {
        "release": release.id,
        "event": "deploy",
        "status": "success" if run.status == "success" else "failed",
        "revision": release.revision,
        "ref": release.ref,
        "user": who(),
        "host": run.remote.host,
        "started": started,
        "finished": _now(),
        "previous": release.previous,
        "backup": release.backup or None,
        "backup_skipped": run.options.skip_backup,
        "migrated": release.migrated,
        "preflight": "skipped (--skip-checks)" if run.options.skip_checks else "passed",
        "timings": {k: round(v, 3) for k, v in run.timings.items()},
        "reason": run.reason,
    }
    try:
        run.timed("log", lambda: release_log.append(run.remote, run.layout, entry))
        if run.status == "success":
            state = HostState(current=release.id, releases=tuple(sorted({*run.state.releases, release.id})))
            run.timed("prune", lambda: _pruned(run, state))
    except ShipfabError as exc:
        run.printer.line(f"warning: could not write the release log / prune: {exc}", run.remote.host, level=0)


def _pruned(run: HostRun, state: HostState) -> str:
    doomed = prune.prune(run.remote, run.layout, state, run.app.keep_releases)
    snapshots = dbflow.prune_backups(run, state.current)
    return (f"removed {len(doomed)} old release(s)" if doomed else "nothing to remove") + snapshots


def _unlock(run: HostRun) -> None:
    try:
        run.timed("unlock", lambda: lock.release(run.remote, run.layout))
    except ShipfabError as exc:
        msg = f"the deploy lock may still be held ({exc}); once the host is reachable run: fab -H {run.remote.host} unlock"
        run.printer.error(msg, run.remote.host)
        run.reason = f"{run.reason}; {msg}" if run.reason else msg
        if run.code == errors.OK:
            run.code = errors.FAILED_MANUAL_ACTION


# ---------------------------------------------------------------- rollback


def rollback(
    targets: list[Target], printer: Printer, options: Options, to: str | None = None, with_db: bool = False,
    yes: bool = False,
) -> int:
    """Switch every target back to the previous release (or `to`) and make it serve; with_db:
    then restore the database snapshot taken before the left release's migrations. The primary
    host goes last, so the database goes back once no host runs the newer code."""
    order = primary_first(targets)
    runs = make_runs(order[1:] + order[:1], printer, options)
    started = time.monotonic()
    try:
        if with_db:
            dbflow.prepare_rollback(runs, to, yes)
        for run in runs:
            _rollback_host(run, to, with_db)
            if run.code != errors.OK:
                break
    finally:
        for run in runs:
            run.remote.close()
    code = summarize(runs, printer, "rollback")
    _notify(runs, "rollback", next((r.release.id for r in runs if r.release.id), to or ""), started)
    return code


def _rollback_host(run: HostRun, to: str | None, with_db: bool = False) -> None:
    try:
        run.timed("lock", lambda: lock.acquire(run.remote, run.layout, f"rollback {to or 'previous'}"))
    except ShipfabError as exc:
        run.fail("locked" if isinstance(exc, LockHeld) else "failed", exc.exit_code, str(exc))
        return
    try:
        run.state = read_state(run.remote, run.layout)
        left = run.state.current
        target = rollback_target(run.state, to, run.remote.host)
        run.release = Release(id=target, ref=f"rollback from {left}")
        run.timed("switch_release", lambda: switch_release(run.remote, run.layout, target) or f"current -> {target}")
        run.timed("activate", lambda: run.stack.activate(run, target))
        restored = dbflow.after_rollback(run, left, target, with_db)
        event = {"release": left, "status": "rolled_back", "rolled_back_to": target, "rolled_back_at": _now(),
                 "rolled_back_by": who(), **({"restored_db": restored} if restored else {})}
        run.timed("log", lambda: release_log.append(run.remote, run.layout, event))
        run.status = "success"
    except UsageError as exc:
        run.fail("refused", exc.exit_code, str(exc))
    except ShipfabError as exc:
        run.fail("failed", errors.FAILED_MANUAL_ACTION, f"{exc}. Manual action needed on {run.remote.host}")
    finally:
        _unlock(run)


# ---------------------------------------------------------------- any per-host task


def each_host(
    targets: list[Target], printer: Printer, options: Options, name: str, fn: Callable[[HostRun], str | None],
    locked: bool = True, read_state_first: bool = True,
) -> int:
    """Run `fn` on each host (under the deploy lock when it changes things), then summarize."""
    runs = make_runs(targets, printer, options)
    try:
        for run in runs:
            try:
                if locked:
                    run.timed("lock", lambda run=run: lock.acquire(run.remote, run.layout, name))
                if read_state_first:
                    run.state = read_state(run.remote, run.layout)
                run.reason = run.timed(name, lambda run=run: fn(run)) or ""
                run.status = "success"
            except ShipfabError as exc:
                status = "locked" if isinstance(exc, LockHeld) else "failed"
                run.fail(status, exc.exit_code, str(exc))
                if isinstance(exc, LockHeld):
                    continue
            finally:
                if locked and run.status != "locked":
                    _unlock(run)
    finally:
        for run in runs:
            run.remote.close()
    return summarize(runs, printer, name, timings=locked)


# ---------------------------------------------------------------- summary


EXIT_PRIORITY = (errors.FAILED_MANUAL_ACTION, errors.LOCK_HELD, errors.PREFLIGHT_FAILED,
                 errors.USAGE, errors.FAILED_ROLLED_BACK)


def exit_code(runs: list[HostRun]) -> int:
    codes = {r.code for r in runs}
    return next((c for c in EXIT_PRIORITY if c in codes), errors.OK)


def summarize(runs: list[HostRun], printer: Printer, what: str, timings: bool = True) -> int:
    """The closing per-step timing table and per-host outcome; returns the exit code."""
    steps: list[str] = []
    for run in runs:
        steps += [s for s in run.timings if s not in steps]
    if timings and steps and printer.verbosity >= 1:
        rows = [[s] + [f"{r.timings[s]:.2f}" if s in r.timings else "-" for r in runs] for s in steps]
        rows.append(["total"] + [f"{sum(r.timings.values()):.2f}" for r in runs])
        printer.line("")
        printer.line(table(["step (s)"] + [r.remote.host for r in runs], rows))
    printer.line("")
    printer.line(
        table(["host", "release", "status", "detail"],
              [[r.remote.host, r.release.id or "-", r.status, " ".join(r.reason.split())[:160]] for r in runs]),
        level=0,
    )
    for r in runs:
        if r.code != errors.OK:
            printer.line(f"{r.status}: {r.reason}", r.remote.host, level=0)
    code = exit_code(runs)
    verdict = "ok" if code == errors.OK else f"FAILED (exit {code})"
    printer.line(f"{what}: {verdict}", level=0)
    if runs and runs[0].options.json_path:
        write_json(runs, runs[0].options.json_path, what, code, printer)
    return code


def write_json(runs: list[HostRun], path: str, what: str, code: int, printer: Printer) -> None:
    """The machine-readable summary (for CI), masked like everything else."""
    data = {
        "task": what,
        "exit_code": code,
        "ok": code == errors.OK,
        "hosts": [
            {"host": r.remote.host, "release": r.release.id, "revision": r.release.revision, "status": r.status,
             "exit_code": r.code, "reason": r.reason, "failed_step": r.failed_step,
             "timings": {k: round(v, 3) for k, v in r.timings.items()},
             "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks]}
            for r in runs
        ],
    }
    Path(path).write_text(printer.redact(json.dumps(data, indent=2)) + "\n")
