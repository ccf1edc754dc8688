"""What every task wrapper shares: -H -> targets, the printer, options, and turning
expected failures into one message and an exit code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from invoke import Exit

from . import fleet, rollout
from .context import HostRun, Options
from .errors import ShipfabError, UsageError
from .inventory import Inventory, Target, load_inventory
from .lookup_help import check_known, require_inventory
from .output import Printer, Redactor
from .secret_rule import local_env


def targets(c: object, printer: Printer) -> list[Target]:
    """The hosts -H names (or the default target); the inventory's secrets join the redaction filter.
    A name nothing knows (hosts.toml, ssh config, DNS) and a missing inventory are usage errors that
    list the known names / say where shipfab looked."""
    return _resolve(c, printer)[1]


def fleet_targets(c: object, printer: Printer, options: Options, parallel: object = None) -> tuple[list[Target], Options]:
    """`targets`, and the options with the hosts worked on at once: --parallel, else hosts.toml's
    [defaults] parallel (a bad value is a usage error, before anything connects)."""
    inventory, found = _resolve(c, printer)
    return found, replace(options, parallel=rollout.parse_parallel(parallel, inventory.parallel))  # type: ignore[arg-type]


def on_fleet(c: object, printer: Printer, options: Options, parallel: object,
             flow: Callable[[list[Target], Printer, Options], int]) -> int:
    """A fleet task's body: targets and --parallel resolved, then `flow` (deploy, rollback)."""
    found, opts = fleet_targets(c, printer, options, parallel)
    return flow(found, printer, opts)


def _resolve(c: object, printer: Printer) -> tuple[Inventory, list[Target]]:
    require_inventory()
    inventory = load_inventory()
    printer.redact.add(inventory.secrets)
    resolved = inventory.resolve(getattr(c, "original_host", None))
    check_known(inventory, resolved)
    for target in resolved:  # the controller's .env, by each app's secret rule
        printer.redact.add_env(local_env(), target.app)
    return inventory, resolved


def printer_for(verbose: bool = False, quiet: bool = False) -> Printer:
    return Printer(Redactor(), verbosity=2 if verbose else 0 if quiet else 1)


def run_cli(fn: Callable[[], int]) -> None:
    """Run a task body; expected failures become one message and an exit code, never a traceback."""
    try:
        code = fn()
    except ShipfabError as exc:
        raise Exit(f"shipfab: {exc}", code=exc.exit_code) from None
    if code:
        raise Exit(code=code)


def options_for(dry_run: bool, verbose: bool, quiet: bool, **kw: object) -> tuple[Printer, Options]:
    printer = printer_for(verbose, quiet)
    return printer, Options(dry_run=dry_run, verbosity=printer.verbosity, **kw)  # type: ignore[arg-type]


def on_each_host(
    c: object, printer: Printer, options: Options, name: str, step: Callable[[HostRun], str | None], locked: bool = True
) -> None:
    """The body of most tasks: `step` on every target host, in parallel (under the deploy lock
    unless `locked=False`), one summary, its exit code."""
    def body() -> int:
        found, opts = fleet_targets(c, printer, options)
        return fleet.each_host(found, printer, opts, name, step, locked=locked)

    run_cli(body)


def known_release(run: HostRun, release_id: str) -> str:
    """`release_id` if its directory exists on the host (read under the lock), else a UsageError listing them."""
    if not release_id or release_id not in run.state.releases:
        valid = ", ".join(run.state.releases) or "(none)"
        raise UsageError(f"{run.host}: unknown release {release_id or '(none)'!r}; valid ids: {valid}")
    return release_id


def duration(record: dict) -> str:
    try:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        took = datetime.strptime(record["finished"], fmt) - datetime.strptime(record["started"], fmt)
    except (KeyError, ValueError, TypeError):
        return "-"
    return f"{took.total_seconds():.0f}s"
