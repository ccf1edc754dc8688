"""`fab backup-db`, `restore-db`, `migrate`, `db-check`: the database steps on their own.

Like the deploy, they act once on the primary host of a group for PostgreSQL (one shared
database) and on every host for SQLite (a file per host).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fabric import task

from . import errors
from .cli import known_release, on_each_host, options_for, printer_for
from .context import HostRun, Options
from .db import DbConn, confirm, connection, handles_database
from .dbflow import app_env
from .errors import ShipfabError, UsageError
from .output import table
from .release import new_release_id
from .steps.backup_db import backup_db as take_snapshot
from .steps.backup_db import list_snapshots
from .steps.db_checks import run_checks
from .steps.migrate import migrate as run_migrate
from .steps.restore_db import check_snapshot
from .steps.restore_db import restore_db as put_back


class DbChecksFailed(ShipfabError):
    exit_code = errors.PREFLIGHT_FAILED


def _each_database_host(c: object, name: str, what: str, body: Callable[[HostRun, DbConn], str], dry_run: bool,
                        verbose: bool) -> None:
    """Run `body` under the deploy lock on each host that handles the database in this run."""
    printer, options = options_for(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        if run.app.database is None:
            raise UsageError(f"{run.remote.host}: app {run.app.name!r} has no [apps.{run.app.name}.database] settings")
        if not handles_database(run.target, run.primary):
            return f"skipped: {what} on {run.primary} (primary; the database is shared)"
        return body(run, connection(run.remote, run.target, run.state.env))

    on_each_host(c, printer, options, name, step)


@task(help={"download": "also copy the snapshot to ./backups/<host>/ here", "dry-run": "print the commands, change nothing"})
def backup_db(c, download=False, dry_run=False, verbose=False):
    """Step alone: a verified database snapshot in backups/ (pg_dump -Fc, or SQLite's backup API)."""

    def body(run: HostRun, conn: DbConn) -> str:
        existing = list(list_snapshots(run.remote, run.layout, conn.engine)) + list(run.state.releases)
        snap = take_snapshot(run.remote, conn, run.app.python, run.layout, new_release_id(existing))
        if snap is None:
            return f"no database yet at {conn.path}: nothing to back up"
        detail = f"snapshot {snap.id}: {snap.path} ({snap.describe()})"
        if download:
            local = Path("backups") / run.remote.host / Path(snap.path).name
            local.parent.mkdir(parents=True, exist_ok=True)
            run.remote.get(snap.path, str(local))
            detail += f"; downloaded to {local}"
        return detail

    _each_database_host(c, "backup_db", "backed up", body, dry_run, verbose)


@task(help={"release": "snapshot id = the release it was taken for (default: the newest snapshot)",
            "yes": "do not ask for confirmation", "dry-run": "check the snapshot and print the commands only"})
def restore_db(c, release=None, yes=False, dry_run=False, verbose=False):
    """Restore a database snapshot (default: the newest) once verified; asks first unless --yes."""

    def body(run: HostRun, conn: DbConn) -> str:
        snapshots = list_snapshots(run.remote, run.layout, conn.engine)
        snapshot = release or (max(snapshots) if snapshots else "")
        if not snapshot:
            raise UsageError(f"{run.remote.host}: no snapshots in {run.layout.backups}")
        snap = check_snapshot(run.remote, conn, run.app.python, run.layout, snapshot)
        if not dry_run:
            confirm(f"{run.remote.host}: restore {conn.label()} from {snap.path}? Its current contents are replaced: "
                    f"{snap.lost_writes()}.", yes)
        return put_back(run.remote, conn, run.app.python, run.layout, snapshot)

    _each_database_host(c, "restore_db", "restored", body, dry_run, verbose)


@task(help={"release": "release to run it in (default: the current one)", "dry-run": "print the command only"})
def migrate(c, release=None, dry_run=False, verbose=False):
    """Step alone: the app's migrate command in a release (default: current), on the primary host."""
    def body(run: HostRun, conn: DbConn) -> str:
        command = run.app.database.migrate  # type: ignore[union-attr]
        if not command:
            raise UsageError(f"{run.remote.host}: no migrate command: set migrate in [apps.{run.app.name}.database]")
        release_id = known_release(run, release or run.state.current)
        return run_migrate(run.remote, conn, run.layout, release_id, command, run.app.python, app_env(run))

    _each_database_host(c, "migrate", "migrations run", body, dry_run, verbose)


@task
def db_check(c):
    """Database checks: connection, extensions, columns, indexes, pending migrations. Changes nothing."""
    printer = printer_for()

    def step(run: HostRun) -> str:
        checks = run_checks(run.remote, run.target)
        if not checks:
            raise UsageError(f"{run.remote.host}: app {run.app.name!r} has no [apps.{run.app.name}.database] settings")
        rows = [[c.name, "warning" if c.warning else "ok" if c.ok else "FAIL", c.detail] for c in checks]
        printer.line(table(["check", "result", "detail"], rows), run.remote.host, level=0)
        failed = [c for c in checks if not c.ok]
        if failed:
            raise DbChecksFailed(f"{len(failed)} of {len(checks)} database checks failed: "
                                 + "; ".join(f"{c.name}: {c.detail}" for c in failed))
        return f"{len(checks)} database checks passed"

    on_each_host(c, printer, Options(), "db_check", step, locked=False)
