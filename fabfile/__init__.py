"""shipfab's `fab` tasks. Thin wrappers: inventory -> targets -> flow (see DESIGN.md).

`-H NAME` names a host or a group of hosts.toml (a name not there goes to Fabric/ssh
config as usual); without -H the inventory's `default` target is used.
"""

from __future__ import annotations

from collections.abc import Callable

from fabric import task
from invoke import Exit

from . import flow
from .errors import ShipfabError, UsageError
from .flow import HostRun, Options
from .inventory import Target, load_inventory
from .output import Printer, table
from .release import Release, new_release_id
from .steps import lock as lock_step
from .steps import release_log
from .steps.deploy_code import deploy_code as deploy_code_step
from .steps.health_check import wait_healthy
from .steps.pip_sync import pip_sync as pip_sync_step
from .steps.restart_gunicorn import restart_gunicorn
from .steps.switch_release import switch_release as switch_release_step


def _targets(c: object) -> list[Target]:
    return load_inventory().resolve(getattr(c, "original_host", None))


def _printer(verbose: bool = False, quiet: bool = False) -> Printer:
    return Printer(verbosity=2 if verbose else 0 if quiet else 1)


def _cli(fn: Callable[[], int]) -> None:
    """Run a task body; expected failures become one message and an exit code, never a traceback."""
    try:
        code = fn()
    except ShipfabError as exc:
        raise Exit(f"shipfab: {exc}", code=exc.exit_code) from None
    if code:
        raise Exit(code=code)


def _options(dry_run: bool, verbose: bool, quiet: bool, **kw: object) -> tuple[Printer, Options]:
    printer = _printer(verbose, quiet)
    return printer, Options(dry_run=dry_run, verbosity=printer.verbosity, **kw)  # type: ignore[arg-type]


@task(help={"ref": "git ref to deploy (default: the app's branch)", "dry-run": "print the commands, change nothing",
            "full-restart": "stop+start gunicorn instead of a graceful reload"})
def deploy(c, ref=None, dry_run=False, full_restart=False, verbose=False, quiet=False):
    """Deploy a git ref: lock, code, venv, switch, reload, health check (auto-rollback on failure)."""
    printer, options = _options(dry_run, verbose, quiet, ref=ref, full_restart=full_restart)
    _cli(lambda: flow.deploy(_targets(c), printer, options))


@task(help={"to": "release id to go back to (default: the one before current)"})
def rollback(c, to=None, dry_run=False, verbose=False, quiet=False):
    """Switch back to the previous release (or --to ID), reload and health-check it."""
    printer, options = _options(dry_run, verbose, quiet)
    _cli(lambda: flow.rollback(_targets(c), printer, options, to=to))


@task
def releases(c):
    """Show the release log of each host: id, revision, ref, who, when, status, snapshot."""
    printer = _printer()

    def show(run: HostRun) -> str:
        records = release_log.read_log(run.remote, run.layout)
        rows = [
            [("* " if r["release"] == run.state.current else "  ") + r["release"], (r.get("revision") or "")[:10],
             r.get("ref", ""), r.get("user", ""), r.get("started", ""), _duration(r), r.get("status", ""),
             r.get("backup") or "-"]
            for r in records
        ]
        printer.line(table(["release", "revision", "ref", "who", "started", "took", "status", "snapshot"], rows),
                     run.remote.host, level=0)
        return f"{len(records)} release(s), current {run.state.current or '(none)'}"

    _cli(lambda: flow.each_host(_targets(c), printer, Options(), "releases", show, locked=False))


@task(help={"ref": "git ref (default: the app's branch)"})
def deploy_code(c, ref=None, dry_run=False, verbose=False):
    """Step alone: create a new release directory from a git ref (not switched)."""
    printer, options = _options(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        run.release = Release(id=new_release_id(list(run.state.releases)), ref=ref or run.app.branch)
        deploy_code_step(run.remote, run.app, run.layout, run.release)
        return f"release {run.release.id} at {run.release.revision[:12]} (not switched)"

    _cli(lambda: flow.each_host(_targets(c), printer, options, "deploy_code", step))


@task(help={"release": "release id (default: the newest release)"})
def pip_sync(c, release=None, dry_run=False, verbose=False):
    """Step alone: build or reuse the venv of a release (default: the newest)."""
    printer, options = _options(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        release_id = _known_release(run, release or (run.state.releases[-1] if run.state.releases else ""))
        run.release = Release(id=release_id, ref="")
        return f"{pip_sync_step(run.remote, run.app, run.layout, run.release)} venv {run.release.venv_hash}"

    _cli(lambda: flow.each_host(_targets(c), printer, options, "pip_sync", step))


@task(help={"to": "release id to make current"})
def switch_release(c, to, dry_run=False, verbose=False):
    """Step alone: point `current` at a release atomically (run `restart` after it)."""
    printer, options = _options(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        switch_release_step(run.remote, run.layout, _known_release(run, to))
        return f"current -> {to}; run `fab restart` to serve it"

    _cli(lambda: flow.each_host(_targets(c), printer, options, "switch_release", step))


@task(help={"full": "stop + start instead of a graceful reload"})
def restart(c, full=False, dry_run=False, verbose=False):
    """Step alone: reload (or --full restart) gunicorn and confirm it serves the current release."""
    printer, options = _options(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        return restart_gunicorn(run.remote, run.app, run.layout, _known_release(run, run.state.current), full=full)

    _cli(lambda: flow.each_host(_targets(c), printer, options, "restart", step))


@task
def health_check(c, verbose=False):
    """Step alone: HTTP health check of each host (retries until the app's timeout)."""
    printer, options = _options(False, verbose, False)

    def step(run: HostRun) -> str:
        probe = wait_healthy(run.remote, run.target)
        return f"healthy: {probe.detail}, {probe.latency * 1000:.0f} ms"

    _cli(lambda: flow.each_host(_targets(c), printer, options, "health_check", step, locked=False))


@task
def lock(c):
    """Take the deploy lock by hand (maintenance); `fab unlock` releases it."""
    printer = _printer()
    _cli(lambda: flow.each_host(_targets(c), printer, Options(), "lock",
                                lambda run: lock_step.acquire(run.remote, run.layout, "manual lock") or "held",
                                locked=False))


@task
def unlock(c):
    """Remove the deploy lock (a stale one after a crash); prints who held it first."""
    printer = _printer()

    def step(run: HostRun) -> str:
        holder = lock_step.holder(run.remote, run.layout)
        if holder is None:
            return "the lock was not held"
        lock_step.release(run.remote, run.layout)
        return f"removed the lock held by {holder}"

    _cli(lambda: flow.each_host(_targets(c), printer, Options(), "unlock", step, locked=False))


def _known_release(run: HostRun, release_id: str) -> str:
    if not release_id or release_id not in run.state.releases:
        valid = ", ".join(run.state.releases) or "(none)"
        raise UsageError(f"{run.remote.host}: unknown release {release_id or '(none)'!r}; valid ids: {valid}")
    return release_id


def _duration(record: dict) -> str:
    from datetime import datetime

    try:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        took = datetime.strptime(record["finished"], fmt) - datetime.strptime(record["started"], fmt)
    except (KeyError, ValueError, TypeError):
        return "-"
    return f"{took.total_seconds():.0f}s"
