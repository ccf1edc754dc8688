"""Many hosts (or one): lock every host of the run first (reading each one's state in the
same round trip), pre-flight, choose the release id, then each host's flow (hostflow.py),
the primary first; one summary and one exit code.

A host that fails is undone and the hosts after it are not started. SIGINT, SIGTERM and
SIGHUP stop the run the same way: undo, log, unlock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from . import dbflow, errors, hostflow, notify, signals
from .context import Check, HostRun, Options
from .db import primary, primary_first
from .errors import ShipfabError, UsageError
from .inventory import Target
from .output import Printer, table
from .probes.http import health_url
from .release import Release, new_release_id, who
from .remote import Remote
from .stacks import stack_for
from .stacks.base import Stack, Step
from .steps import host_state, release_log
from .steps.deploy_code import local_revision
from .steps.preflight import checks_from, facts_cmd
from .strategies import symlink


def make_runs(targets: list[Target], printer: Printer, options: Options) -> list[HostRun]:
    first = primary(targets).name if targets else ""
    return [HostRun(t, Remote(t, printer, options.dry_run), printer, options, primary=first) for t in targets]


def close_all(runs: list[HostRun]) -> None:
    with signals.shielded("releasing the deploy locks"):
        for run in runs:
            hostflow.unlock(run)
            run.remote.close()


def lock_all(runs: list[HostRun], what: str, with_facts: bool) -> dict[str, str] | None:
    """Lock every host (a dry run only reads); host -> facts output. On any failure the
    others are marked skipped and None returned (the caller's close_all releases what was taken)."""
    facts: dict[str, str] = {}
    for run in runs:
        cmd = facts_cmd(run.app, run.layout) if with_facts else ""
        if run.options.dry_run:
            try:
                run.state, parts = host_state.read_state(run.remote, run.layout, cmd)
                facts[run.host] = parts.get("facts", "")
            except ShipfabError as exc:
                run.fail("preflight_failed", errors.PREFLIGHT_FAILED, f"pre-flight failed: {exc}")
        else:
            facts[run.host] = hostflow.take_lock(run, what, cmd)
        if run.status != "pending":
            skip_others(runs, run, "not started: another host could not be locked (nothing changed)")
            return None
    return facts


def skip_others(runs: list[HostRun], failed: HostRun, why: str) -> None:
    for run in runs:
        if run is not failed and run.status in ("pending", "ok"):
            run.fail("skipped", errors.OK, why)


# ---------------------------------------------------------------- deploy


def deploy(targets: list[Target], printer: Printer, options: Options) -> int:
    """Deploy `options.ref` to every target under one release id; returns the exit code."""
    runs = make_runs(primary_first(targets), printer, options)
    started = time.monotonic()
    release_id = ""
    for run in runs:  # a ref that does not exist is a usage error, found before anything changes
        if not run.app.repo:
            local_revision(run.app.checkout, options.ref or run.app.branch)
    with signals.interruptible():
        try:
            facts = lock_all(runs, f"deploy {options.ref or runs[0].app.branch}", not options.skip_checks)
            if facts is not None and preflight_passed(runs, facts, printer, options):
                release_id = choose_release_id(runs)
                printer.line(f"release {release_id}{' (dry run: nothing will change)' if options.dry_run else ''}")
                _notify(runs, "start", release_id, started)
                deploy_each(runs, release_id)
        except KeyboardInterrupt as exc:
            for run in runs:
                if run.status == "pending":
                    run.fail("skipped" if not run.lock_token else "failed", errors.FAILED_ROLLED_BACK if run.lock_token
                             else errors.OK, f"not started: {hostflow.cause_of(exc)}")
        finally:
            close_all(runs)
    code = summarize(runs, printer, "deploy")
    if release_id:
        _notify(runs, "success" if code == errors.OK else "failure", release_id, started)
    return code


def choose_release_id(runs: list[HostRun]) -> str:
    """Newer than every release directory, log entry and snapshot on every host (read under the locks)."""
    existing = [r for run in runs for r in run.state.releases]
    existing += [e["release"] for run in runs for e in run.state.events]
    existing += [s.split(".", 1)[0] for run in runs for s in run.state.snapshots]
    return new_release_id(existing)


def deploy_each(runs: list[HostRun], release_id: str) -> None:
    for run in runs:
        run.release = Release(id=release_id, ref=run.options.ref or run.app.branch, previous=run.state.current)
        started = hostflow.now()
        stopped = hostflow.run_steps(run, stack_for(run.app.stack).steps)
        if stopped is None:
            health = f"; health {health_url(run.app.health, run.target)}" if run.app.health.url else ""
            run.status, run.reason = "success", (f"dry run: would serve {release_id}" if run.options.dry_run
                                                 else f"serving {release_id}{health}")
        hostflow.finish(run, [hostflow.deploy_entry(run, started)], prune=stopped is None)
        if isinstance(stopped, KeyboardInterrupt):
            skip_others(runs, run, f"not started: {hostflow.cause_of(stopped)}")
            return
        if run.code != errors.OK:
            skip_others(runs, run, "not started: an earlier host failed")
            return


def preflight_passed(runs: list[HostRun], facts: dict[str, str], printer: Printer, options: Options,
                     always_show: bool = False) -> bool:
    """Evaluate the pre-flight facts of every host and print them; False (hosts marked) on any failure."""
    if options.skip_checks:
        printer.line("pre-flight checks skipped (--skip-checks)", level=0)
        for run in runs:
            run.checks = [Check("preflight", True, "skipped (--skip-checks)")]
        return True
    for run in runs:
        run.checks = checks_from(run.remote, run.target, facts.get(run.host, ""), options.ref,
                                 locked_by_us=bool(run.lock_token) or options.dry_run, state=run.state)
    print_checks(runs, printer, always_show)
    bad = [run for run in runs if any(not c.ok and not c.warning for c in run.checks)]
    for run in bad:
        detail = "; ".join(f"{c.name}: {c.detail}" for c in run.checks if not c.ok and not c.warning)
        run.fail("preflight_failed", errors.PREFLIGHT_FAILED, f"pre-flight failed, nothing changed: {detail}")
    if bad:
        skip_others(runs, bad[0], "not started: pre-flight failed on another host")
    return not bad


def print_checks(runs: list[HostRun], printer: Printer, always_show: bool = False) -> None:
    """The checks table: shown when something failed (or asked for), else only at normal verbosity."""
    def result(c: Check) -> str:
        return "ok" if c.ok else "WARN" if c.warning else "FAIL"

    rows = [[c.name, run.host, result(c), c.detail] for run in runs for c in run.checks]
    failed = any(r[2] != "ok" for r in rows)
    printer.line(table(["check", "host", "result", "detail"], rows), level=0 if failed or always_show else 1)


def _notify(runs: list[HostRun], event: str, release_id: str, started: float) -> None:
    """One webhook message for the whole run (the first app's settings; hosts of a group share an app)."""
    if not runs or runs[0].options.dry_run:
        return
    failed = next((r for r in runs if r.code != errors.OK), None)
    info = {
        "app": runs[0].app.name,
        "hosts": [r.host for r in runs],
        "release": release_id,
        "revision": next((r.release.revision for r in runs if r.release.revision), ""),
        "user": who(),
        "duration": None if event == "start" else round(time.monotonic() - started, 3),
        "status": {r.host: r.status for r in runs},
    }
    if failed is not None and event != "start":
        info.update(failed_step=failed.failed_step or failed.status, reason=" ".join(failed.reason.split())[:300])
    notify.send(runs[0].app.notify, event, hostflow.mask(runs[0], info), runs[0].printer)


# ---------------------------------------------------------------- rollback


def rollback(targets: list[Target], printer: Printer, options: Options, to: str | None = None, with_db: bool = False,
             yes: bool = False) -> int:
    """Every target back to the release that served before `current` (or `to`), per its
    release log; with_db: then the database snapshot taken before the left release's
    migrations, once, on the primary, which goes last (no host runs the newer code then)."""
    order = primary_first(targets)
    runs = make_runs(order[1:] + order[:1], printer, options)
    started = time.monotonic()
    with signals.interruptible():
        try:
            if lock_all(runs, f"rollback {to or 'previous'}", with_facts=False) is not None and choose_targets(runs, to):
                if with_db:
                    dbflow.prepare_rollback(runs, yes)
                rollback_each(runs, with_db)
        except UsageError as exc:
            for run in runs:
                if run.status == "pending":
                    run.fail("refused", exc.exit_code, str(exc))
        except KeyboardInterrupt as exc:
            for run in runs:
                if run.status == "pending":
                    run.fail("skipped", errors.OK, f"not started: {hostflow.cause_of(exc)}")
        finally:
            close_all(runs)
    code = summarize(runs, printer, "rollback")
    _notify(runs, "rollback", next((r.release.id for r in runs if r.release.id), to or ""), started)
    return code


def choose_targets(runs: list[HostRun], to: str | None) -> bool:
    """Each host's target from its release log (read under the lock); refusals end the run."""
    for run in runs:
        try:
            target = release_log.rollback_target(run.state, to, run.host)
        except UsageError as exc:
            run.fail("refused", exc.exit_code, str(exc))
            skip_others(runs, run, "not started: the rollback was refused on another host (nothing changed)")
            return False
        run.release = Release(id=target, ref=f"rollback from {run.state.current}", previous=run.state.current)
    return True


def rollback_each(runs: list[HostRun], with_db: bool) -> None:
    for run in runs:
        stack = stack_for(run.app.stack)
        target, left = run.release.id, run.release.previous
        stopped = hostflow.run_steps(run, rollback_steps(stack, target, with_db))
        if stopped is None:
            run.status, run.reason = "success", f"{target} serves again (left {left})"
            event = {"release": left, "event": "rollback", "status": "rolled_back", "rolled_back_to": target,
                     "rolled_back_at": hostflow.now(), "rolled_back_by": who(),
                     **({"restored_db": run.release.backup} if run.release.backup else {})}
            back = {"release": target, "event": "rollback_to", "status": "success", "current_since": hostflow.now()}
            hostflow.finish(run, [event, back], prune=False)
        else:
            hostflow.finish(run, [], prune=False)
            skip_others(runs, run, "not started: an earlier host failed")
            return


def rollback_steps(stack: Stack, target: str, with_db: bool) -> list[Step]:
    """boot check of the target, switch (undo: back to the left release), make it serve, then the database."""
    return [
        Step("boot_check", lambda run: stack.boot_check(run, target)),
        Step("switch_release", lambda run: symlink.switch(run, stack.activate)),
        Step("activate", lambda run: stack.activate(run, target)),
        Step("database", lambda run: dbflow.after_rollback(run, run.release.previous, target, with_db)),
    ]


# ---------------------------------------------------------------- any per-host task


def each_host(targets: list[Target], printer: Printer, options: Options, name: str, fn: Callable[[HostRun], str | None],
              locked: bool = True, read_state: bool = True) -> int:
    """Run `fn` on each host (under the deploy lock, state read with it, when it changes
    things; its registered undos run if it fails), then summarize."""
    runs = make_runs(targets, printer, options)
    with signals.interruptible():
        try:
            for run in runs:
                stopped = one_host(run, name, fn, locked and not options.dry_run, read_state)
                if isinstance(stopped, KeyboardInterrupt):
                    skip_others(runs, run, f"not started: {hostflow.cause_of(stopped)}")
                    break
        finally:
            close_all(runs)
    return summarize(runs, printer, name, timings=locked)


def one_host(run: HostRun, name: str, fn: Callable[[HostRun], str | None], locked: bool,
             read_state: bool) -> BaseException | None:
    """`fn` as the one step of a run on this host; returns what stopped it."""
    if locked:
        hostflow.take_lock(run, name)
    elif read_state:
        try:
            run.state, _ = host_state.read_state(run.remote, run.layout)
        except ShipfabError as exc:
            run.fail("failed", exc.exit_code if isinstance(exc, UsageError) else errors.PREFLIGHT_FAILED, str(exc))
    if run.status != "pending":
        return None
    details: list[str] = []

    def step(r: HostRun) -> str:
        details.append(fn(r) or "")
        return details[-1]

    stopped = hostflow.run_steps(run, [Step(name, step)])
    if stopped is None:
        run.status, run.reason = "success", details[0] if details else ""
        run.undos.clear()
    elif isinstance(stopped, ShipfabError) and run.code == errors.FAILED_ROLLED_BACK != stopped.exit_code:
        # undone cleanly: the task's own answer and exit code (usage 64, failed checks 4)
        run.fail("refused" if isinstance(stopped, UsageError) else "failed", stopped.exit_code, str(stopped))
    hostflow.unlock(run)
    return stopped


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
    code = exit_code(runs)
    if code == errors.USAGE and all(r.code in (errors.OK, errors.USAGE) for r in runs):
        for r in runs:
            if r.code == errors.USAGE:
                printer.error(f"shipfab: {r.reason} (exit {code})")
                break
        return code
    if timings and steps and printer.verbosity >= 1:
        rows = [[s] + [f"{r.timings[s]:.2f}" if s in r.timings else "-" for r in runs] for s in steps]
        rows.append(["total"] + [f"{sum(r.timings.values()):.2f}" for r in runs])
        printer.line("")
        printer.line(table(["step (s)"] + [r.host for r in runs], rows))
    printer.line("")
    printer.line(
        table(["host", "release", "status", "detail"],
              [[r.host, r.release.id or "-", r.status, " ".join(r.reason.split())[:160]] for r in runs]),
        level=0,
    )
    for r in runs:
        if r.code != errors.OK:
            printer.line(f"{r.status}: {r.reason}", r.host, level=0)
    dry = runs and runs[0].options.dry_run
    if dry:
        count = sum(r.remote.would_run for r in runs)
        printer.line(f"dry run: {count} commands on {len(runs)} hosts; nothing changed", level=0)
    else:
        verdict = "ok" if code == errors.OK else f"FAILED (exit {code})"
        printer.line(f"{what}: {verdict}", level=0)
    if runs and runs[0].options.json_path:
        write_json(runs, runs[0].options.json_path, what, code)
    return code


def write_json(runs: list[HostRun], path: str, what: str, code: int) -> None:
    """The machine-readable summary (for CI), masked before it is serialized."""
    data = {
        "task": what,
        "exit_code": code,
        "ok": code == errors.OK,
        "hosts": [
            {"host": r.host, "release": r.release.id, "revision": r.release.revision, "status": r.status,
             "exit_code": r.code, "reason": r.reason, "failed_step": r.failed_step,
             "timings": {k: round(v, 3) for k, v in r.timings.items()},
             "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks]}
            for r in runs
        ],
    }
    masked = hostflow.mask(runs[0], data) if runs else data
    Path(path).write_text(json.dumps(masked, indent=2, ensure_ascii=False) + "\n")
