"""Many hosts (or one), in phases across the fleet (DESIGN.md "Fleets"): lock every host
(reading its state in the same round trip) and pre-flight them, all in parallel; choose ONE
release id; prepare every host in parallel (a new barrier at each change of phase, so the
primary's backup + migrations finish before any host goes on); then publish + verify batch
after batch; log, prune and unlock every host. One summary (who serves what), one exit code.

A failure before publishing stops every host at its next step and undoes them all: nothing
was published anywhere. A host that fails to publish is undone; once more hosts failed than
--max-fail tolerates, no new batch starts and the hosts not started are undone of their
preparation (`skipped`); --all-or-nothing also undoes the hosts that already published.
SIGINT, SIGTERM and SIGHUP stop every host at its next step: undo, log, unlock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import dbflow, errors, hostflow, notify, parallel, rollout, signals
from .context import Check, HostRun, Options
from .db import primary, primary_first
from .errors import ShipfabError, UsageError
from .inventory import Target
from .output import Printer, table
from .parallel import Stop
from .probes.http import health_url
from .release import Release, new_release_id, who
from .remote import Remote
from .stacks import stack_for
from .stacks.base import Stack, Step
from .steps import host_state, release_log
from .steps.deploy_code import local_revision
from .steps.preflight import checks_from, facts_cmd, python_version
from .strategies import symlink

TIMING_COLUMNS = 8  # up to this many hosts the timing table has a column per host


@dataclass(frozen=True)
class Shape:
    """--batch / --max-fail / --all-or-nothing, parsed before anything connects."""

    batch: rollout.Share | None
    max_fail: rollout.Share | None
    all_or_nothing: bool

    @classmethod
    def of(cls, options: Options) -> Shape:
        return cls(rollout.parse_share(options.batch, "batch", 1), rollout.parse_share(options.max_fail, "max-fail", 0),
                   options.all_or_nothing)

    def describe(self, total: int) -> str:
        if total < 2:
            return ""
        size = len(rollout.batches(range(total), self.batch)[0])
        parts = [f"{total} hosts", f"batches of {size}" if size < total else "one batch",
                 f"--max-fail {rollout.tolerated(self.max_fail, total)}"]
        return "; ".join(parts + (["--all-or-nothing"] if self.all_or_nothing else []))


def make_runs(targets: list[Target], printer: Printer, options: Options) -> list[HostRun]:
    first = primary(targets).name if targets else ""
    if len(targets) > 1:
        printer.live = False  # one live status line cannot show many hosts at once
    return [HostRun(t, Remote(t, printer, options.dry_run), printer, options, primary=first) for t in targets]


def pool(runs: list[HostRun], fn: Callable[[HostRun], object], stop: Stop) -> None:
    """fn on every run, `options.parallel` at once (see parallel.each)."""
    if runs:
        parallel.each(runs, fn, runs[0].options.parallel, stop)


def close_all(runs: list[HostRun]) -> None:
    def close(run: HostRun) -> None:
        hostflow.unlock(run)
        run.remote.close()

    with signals.shielded("releasing the deploy locks"):
        pool(runs, close, Stop())


def lock_all(runs: list[HostRun], what: str, with_facts: bool, stop: Stop) -> dict[str, str] | None:
    """Lock every host in parallel (a dry run only reads); host -> facts output. If any host
    could not be locked the others are marked skipped and None returned (the caller's
    close_all releases the locks taken)."""
    facts: dict[str, str] = {}

    def one(run: HostRun) -> None:
        if stop:
            return
        cmd = facts_cmd(run.app, run.layout) if with_facts else ""
        if run.options.dry_run:
            try:
                run.state, parts = host_state.read_state(run.remote, run.layout, cmd)
                facts[run.host] = parts.get("facts", "")
            except ShipfabError as exc:
                run.fail("preflight_failed", errors.PREFLIGHT_FAILED, f"pre-flight failed: {exc}")
        else:
            facts[run.host] = hostflow.take_lock(run, what, cmd)

    pool(runs, one, stop)
    stop.check()  # only a signal sets it here: raises Interrupted
    failed = next((run for run in runs if run.status != "pending"), None)
    if failed is not None:
        skip_others(runs, failed, "not started: another host could not be locked (nothing changed)")
        return None
    return facts


def skip_others(runs: list[HostRun], failed: HostRun, why: str) -> None:
    for run in runs:
        if run is not failed and run.status in ("pending", "ok"):
            run.fail("skipped", errors.OK, why)


# ---------------------------------------------------------------- deploy


def deploy(targets: list[Target], printer: Printer, options: Options) -> int:
    """Deploy `options.ref` to every target under one release id; returns the exit code."""
    shape = Shape.of(options)  # a bad --batch / --max-fail is a usage error before anything connects
    runs = make_runs(primary_first(targets), printer, options)
    stop = Stop()
    started = time.monotonic()
    release_id = ""
    # The ref resolved once per checkout, before anything changes (a ref that does not exist is a
    # usage error): every host gets the same commit, even if the branch moves during the run.
    resolved: dict[tuple[str, str], str] = {}
    revisions: dict[str, str] = {}
    for run in runs:
        key = (run.app.checkout, options.ref or run.app.branch)
        if not run.app.repo:
            if key not in resolved:
                resolved[key] = local_revision(*key)
            revisions[run.host] = resolved[key]
    with signals.interruptible():
        try:
            facts = lock_all(runs, f"deploy {options.ref or runs[0].app.branch}", not options.skip_checks, stop)
            if facts is not None and preflight_passed(runs, facts, printer, options):
                release_id = choose_release_id(runs)
                how = shape.describe(len(runs))
                printer.line(f"release {release_id}{' (dry run: nothing will change)' if options.dry_run else ''}"
                             f"{f' ({how})' if how else ''}")
                _notify(runs, "start", release_id, started)
                deploy_fleet(runs, release_id, shape, stop, revisions)
        except KeyboardInterrupt as exc:
            for run in runs:
                if run.status == "pending":
                    run.fail("skipped" if not run.lock_token else "failed", errors.FAILED_ROLLED_BACK if run.lock_token
                             else errors.OK, f"not started: {hostflow.cause_of(exc)}")
        finally:
            close_all(runs)
    code = summarize(runs, printer, "deploy", serving_line=True)
    if release_id:
        _notify(runs, "success" if code == errors.OK else "failure", release_id, started)
    return code


def choose_release_id(runs: list[HostRun]) -> str:
    """Newer than every release directory, log entry and snapshot on every host (read under the locks)."""
    existing = [r for run in runs for r in run.state.releases]
    existing += [e["release"] for run in runs for e in run.state.events]
    existing += [s.split(".", 1)[0] for run in runs for s in run.state.snapshots]
    return new_release_id(existing)


def deploy_fleet(runs: list[HostRun], release_id: str, shape: Shape, stop: Stop, revisions: dict[str, str]) -> None:
    """Prepare every host, then publish batch after batch; every host logged and pruned.
    `revisions`: host -> the commit its ref resolved to (hosts whose code comes from a local checkout)."""
    started = hostflow.now()
    plans: dict[str, tuple[list[list[Step]], list[Step]]] = {}
    for run in runs:
        run.release = Release(id=release_id, ref=run.options.ref or run.app.branch, previous=run.state.current,
                              revision=revisions.get(run.host, ""))
        plans[run.host] = hostflow.plan(stack_for(run.app.stack).steps)

    def mark_serving(run: HostRun) -> None:
        url = health_url(run.app.health, run.target)
        run.status, run.reason = "success", (f"dry run: would serve {release_id}" if run.options.dry_run
                                             else f"serving {release_id}" + (f"; health {url}" if url else ""))

    try:
        if prepare_all(runs, [plans[r.host][0] for r in runs], stop):
            publish(runs, rollout.batches(runs, shape.batch), lambda run: plans[run.host][1], mark_serving, shape, stop)
    except KeyboardInterrupt as exc:  # between two phases, in the main thread
        stop.interrupt(exc)
    with signals.shielded("undoing and logging the hosts"):
        undo_each([r for r in runs if r.status == "pending"], stop.why or "stopped", skipped=False)

        def finish(run: HostRun) -> None:
            if run.status != "skipped":
                hostflow.finish(run, [hostflow.deploy_entry(run, started)], prune=run.status == "success")

        pool(runs, finish, Stop())


def prepare_all(runs: list[HostRun], segments: list[list[list[Step]]], stop: Stop) -> bool:
    """The steps before publishing, segment by segment across the fleet (every host in
    parallel, all waited for between two). A failure stops the others at their next step and
    undoes every host: False, nothing was published anywhere."""
    for i in range(max(map(len, segments), default=0)):
        todo = [(run, segs[i]) for run, segs in zip(runs, segments, strict=True) if i < len(segs)]
        by_host = {run.host: steps for run, steps in todo}
        pool([run for run, _ in todo], lambda run, part=by_host: _steps(run, part[run.host], stop, halt_others=True),
             stop)
        failed = next((r for r in runs if r.status != "pending"), None)
        if failed is not None or stop:
            undo_each([r for r in runs if r.status == "pending"],
                      stop.why or f"stopped: {failed.host if failed else '?'} failed before any host published",
                      skipped=False)
            return False
    return True


def _steps(run: HostRun, steps: list[Step], stop: Stop, halt_others: bool) -> BaseException | None:
    """One host's part of a phase; its failure (undone by run_steps) noted on `stop`."""
    if run.status != "pending":
        return None
    stopped = hostflow.run_steps(run, steps, stop)
    if isinstance(stopped, KeyboardInterrupt):  # a signal (one worker: in this very step); the first one counts
        stop.interrupt(stopped)
    elif stopped is not None and halt_others and not stop:
        stop.halt(f"stopped: {run.host} failed in {run.failed_step or 'a step'} before any host published")
    return stopped


def publish(runs: list[HostRun], groups: list[list[HostRun]], steps_of: Callable[[HostRun], list[Step]],
            on_success: Callable[[HostRun], None], shape: Shape, stop: Stop) -> None:
    """Batch after batch (a batch's hosts in parallel): each host's publish + verify steps;
    a failed host is undone. Once more hosts failed than tolerated (or a signal came), no new
    batch starts and the hosts left are undone (`skipped`); --all-or-nothing then undoes
    the hosts that published too."""
    tolerate = rollout.tolerated(shape.max_fail, len(runs))
    printer = runs[0].printer

    def one(run: HostRun) -> None:
        if _steps(run, steps_of(run), stop, halt_others=False) is None and run.status == "pending":
            on_success(run)

    for n, batch in enumerate(groups):
        failed = [r for r in runs if r.code != errors.OK]
        if stop or len(failed) > tolerate:
            why = stop.why or f"{len(failed)} host(s) failed, more than --max-fail {tolerate}"
            undo_each([r for group in groups[n:] for r in group if r.status == "pending"], why, skipped=True)
            break
        if len(groups) > 1:
            printer.line(f"batch {n + 1}/{len(groups)}: {', '.join(r.host for r in batch)}")
        pool(batch, one, stop)
    if shape.all_or_nothing:
        all_or_nothing(runs, stop)


def all_or_nothing(runs: list[HostRun], stop: Stop) -> None:
    """--all-or-nothing: when any host failed (or a signal came), undo the hosts that published too."""
    failed = [r for r in runs if r.code != errors.OK]
    if failed or stop:
        why = stop.why or f"--all-or-nothing: {', '.join(r.host for r in failed)} failed"
        undo_each([r for r in runs if r.status == "success"], why, skipped=False)


def undo_each(runs: list[HostRun], cause: str, skipped: bool) -> None:
    """Undo every run in parallel (each its own undos, shielded). skipped: these hosts were
    not started in this phase, nothing of theirs was published: status `skipped`."""
    def one(run: HostRun) -> None:
        if not run.undos:
            run.fail("skipped", errors.OK, f"not started: {cause}")
            return
        hostflow.undo(run, cause)
        if skipped and run.code == errors.FAILED_ROLLED_BACK:
            run.fail("skipped", errors.OK, f"not published ({cause}); its prepared release was taken back")

    with signals.shielded("undoing the hosts"):
        pool(runs, one, Stop())


def preflight_passed(runs: list[HostRun], facts: dict[str, str], printer: Printer, options: Options,
                     always_show: bool = False) -> bool:
    """Evaluate the pre-flight facts of every host and print them; False (hosts marked) on any failure."""
    if options.skip_checks:
        printer.line("pre-flight checks skipped (--skip-checks)", level=0)
        for run in runs:
            run.checks = [Check("preflight", True, "skipped (--skip-checks)")]
        return True
    ahead: dict[tuple[str, str, str], str] = {}
    for run in runs:
        run.checks = checks_from(run.remote, run.target, facts.get(run.host, ""), options.ref,
                                 locked_by_us=bool(run.lock_token) or options.dry_run, state=run.state, ahead=ahead)
        run.python_version = python_version(facts.get(run.host, ""))
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
    release log, hosts in parallel (in batches with --batch); with_db: then the database
    snapshot taken before the left release's migrations, once, on the primary, which goes
    alone and last, only once every other host left the newer code."""
    shape = Shape.of(options)
    order = primary_first(targets)
    runs = make_runs(order[1:] + order[:1], printer, options)
    stop = Stop()
    started = time.monotonic()
    with signals.interruptible():
        try:
            if lock_all(runs, f"rollback {to or 'previous'}", False, stop) is not None and choose_targets(runs, to):
                if with_db:
                    dbflow.prepare_rollback(runs, yes)
                rollback_fleet(runs, with_db, shape, stop)
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
    code = summarize(runs, printer, "rollback", serving_line=True)
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


def rollback_fleet(runs: list[HostRun], with_db: bool, shape: Shape, stop: Stop) -> None:
    """The rollback steps batch after batch; with_db: the primary (last in `runs`) alone at the
    end, and only if every other host went back. Each host that went back is logged."""
    def steps_of(run: HostRun) -> list[Step]:
        return rollback_steps(stack_for(run.app.stack), run.release.id, with_db)

    def back(run: HostRun) -> None:
        run.status, run.reason = "success", f"{run.release.id} serves again (left {run.release.previous})"

    try:
        if with_db:
            others, last, relaxed = runs[:-1], runs[-1], Shape(shape.batch, shape.max_fail, False)
            publish(runs, rollout.batches(others, shape.batch), steps_of, back, relaxed, stop)
            if all(r.status == "success" for r in others) and not stop:
                publish(runs, [[last]], steps_of, back, relaxed, stop)
            else:
                undo_each([last], "the database is restored only once every other host went back", skipped=True)
            if shape.all_or_nothing:
                all_or_nothing(runs, stop)
        else:
            publish(runs, rollout.batches(runs, shape.batch), steps_of, back, shape, stop)
    except KeyboardInterrupt as exc:
        stop.interrupt(exc)
    with signals.shielded("undoing and logging the hosts"):
        undo_each([r for r in runs if r.status == "pending"], stop.why or "stopped", skipped=False)
        pool(runs, rollback_finish, Stop())


def rollback_finish(run: HostRun) -> None:
    """Log a host that went back (two events); any other host only unlocks."""
    if run.status == "skipped":
        return
    if run.status != "success":
        hostflow.finish(run, [], prune=False)
        return
    target, left = run.release.id, run.release.previous
    event = {"release": left, "event": "rollback", "status": "rolled_back", "rolled_back_to": target,
             "rolled_back_at": hostflow.now(), "rolled_back_by": who(),
             **({"restored_db": run.release.backup} if run.release.backup else {})}
    again = {"release": target, "event": "rollback_to", "status": "success", "current_since": hostflow.now()}
    hostflow.finish(run, [event, again], prune=False)


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
    """Run `fn` on each host, `options.parallel` at once (under the deploy lock, state read
    with it, when it changes things; its registered undos run if it fails), then summarize."""
    runs = make_runs(targets, printer, options)
    stop = Stop()

    def one(run: HostRun) -> None:
        if stop:
            run.fail("skipped", errors.OK, f"not started: {stop.why}")
            return
        stopped = one_host(run, name, fn, locked and not options.dry_run, read_state, stop)
        if isinstance(stopped, KeyboardInterrupt):
            stop.interrupt(stopped)

    with signals.interruptible():
        try:
            pool(runs, one, stop)
        finally:
            close_all(runs)
    return summarize(runs, printer, name, timings=locked)


def one_host(run: HostRun, name: str, fn: Callable[[HostRun], str | None], locked: bool,
             read_state: bool, stop: Stop | None = None) -> BaseException | None:
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

    stopped = hostflow.run_steps(run, [Step(name, step)], stop)
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


def serving(run: HostRun) -> str:
    """The release this host serves after the run, as the run knows it ("?" when an undo could not finish)."""
    if run.code == errors.FAILED_MANUAL_ACTION:
        return "?"
    if run.status == "success":
        return run.release.id
    return run.state.current or "-"


def median(ordered: list[float]) -> float:
    """The median of values already in order (`statistics` would add ~3 ms to every `fab`'s start)."""
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def timing_table(runs: list[HostRun]) -> str:
    """Seconds per step: a column per host (up to TIMING_COLUMNS hosts), else one row per step
    with min / median / max over the hosts that ran it and the slowest host."""
    steps: list[str] = []
    for run in runs:
        steps += [s for s in run.timings if s not in steps]
    if len(runs) <= TIMING_COLUMNS:
        rows = [[s] + [f"{r.timings[s]:.2f}" if s in r.timings else "-" for r in runs] for s in steps]
        rows.append(["total"] + [f"{sum(r.timings.values()):.2f}" for r in runs])
        return table(["step (s)"] + [r.host for r in runs], rows)
    rows = []
    for s in steps:
        took = sorted((r.timings[s], r.host) for r in runs if s in r.timings)
        rows.append([s, len(took), f"{took[0][0]:.2f}", f"{median([t for t, _ in took]):.2f}",
                     f"{took[-1][0]:.2f}", took[-1][1]])
    return table(["step (s)", "hosts", "min", "median", "max", "slowest"], rows)


def summarize(runs: list[HostRun], printer: Printer, what: str, timings: bool = True, serving_line: bool = False) -> int:
    """The closing step-timing table and per-host outcome (with serving_line: which hosts
    serve which release); returns the exit code."""
    code = exit_code(runs)
    if code == errors.USAGE and all(r.code in (errors.OK, errors.USAGE) for r in runs):
        for r in runs:
            if r.code == errors.USAGE:
                printer.error(f"shipfab: {r.reason} (exit {code})")
                break
        return code
    if timings and any(r.timings for r in runs) and printer.verbosity >= 1:
        printer.line("")
        printer.line(timing_table(runs))
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
    if serving_line and not dry and len(runs) > 1:
        by_release: dict[str, list[str]] = {}
        for r in runs:
            by_release.setdefault(serving(r), []).append(r.host)
        printer.line("serving: " + "; ".join(f"{rel} on {', '.join(hosts)}" for rel, hosts in by_release.items()),
                     level=0)
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
            {"host": r.host, "release": r.release.id, "serving": serving(r), "revision": r.release.revision,
             "status": r.status,
             "exit_code": r.code, "reason": r.reason, "failed_step": r.failed_step,
             "timings": {k: round(v, 3) for k, v in r.timings.items()},
             "checks": [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks]}
            for r in runs
        ],
    }
    masked = hostflow.mask(runs[0], data) if runs else data
    Path(path).write_text(json.dumps(masked, indent=2, ensure_ascii=False) + "\n")
