"""The database half of the flows, for any stack.

Deploy: `backup_db` then (after the code and venv) `migrate`, both before the switch;
for PostgreSQL once, on the primary host of the run, for SQLite on every host. A
failed migration is undone by restoring the snapshot this deploy just took.
Rollback: `--with-db` puts back the snapshot taken before the left release's
migrations (checked and confirmed before anything changes); a plain rollback warns
when the release it leaves ran migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .db import DatabaseNotRestored, DbConn, confirm, connection, handles_database
from .errors import ShipfabError, StepFailed, UsageError
from .steps import release_log
from .steps.backup_db import backup_db, prune_snapshots
from .steps.host_state import read_state
from .steps.migrate import MigrationFailed, migrate
from .steps.restore_db import check_snapshot, restore_db
from .steps.rollback import rollback_target

if TYPE_CHECKING:
    from .flow import HostRun


def snapshot_id(path: str) -> str:
    """backups/20261123T101500Z.dump -> 20261123T101500Z"""
    return Path(path).name.split(".", 1)[0]


def _skip(run: HostRun, what: str) -> str | None:
    """Why this host does not do `what` in this run (None: it does)."""
    if run.app.database is None:
        return "no database configured"
    if not handles_database(run.target, run.primary):
        return f"skipped: {what} on {run.primary} (primary)"
    return None


def backup_step(run: HostRun) -> str:
    """Deploy step backup_db: a verified snapshot named after the new release."""
    skip = _skip(run, "the shared database is backed up")
    if skip:
        return skip
    if run.options.skip_backup:
        return "skipped (--skip-backup): this release has no snapshot, a failed migration cannot be undone"
    conn = connection(run.remote, run.target)
    snap = backup_db(run.remote, conn, run.app.python, run.layout, run.release.id)
    if snap is None:
        return f"no database yet at {conn.path}: nothing to back up"
    run.release.backup = snap.path
    return snap.describe()


def migrate_step(run: HostRun) -> str:
    """Deploy step migrate: the app's command in the new release; a failure restores the snapshot."""
    skip = _skip(run, "migrations run once")
    if skip or not run.app.database.migrate:  # type: ignore[union-attr]
        return skip or "no migrate command configured"
    conn = connection(run.remote, run.target)
    try:
        detail = migrate(run.remote, conn, run.layout, run.release.id, run.app.database.migrate)  # type: ignore[union-attr]
    except MigrationFailed as exc:
        raise _restore_after(run, conn, exc) from None
    run.release.migrated = True
    return detail


def _restore_after(run: HostRun, conn: DbConn, failure: MigrationFailed) -> StepFailed:
    """Put back the snapshot taken just before the failed migration; the error says how that went."""
    host, release_id, backup = run.remote.host, run.release.id, run.release.backup
    if not backup:
        why = "--skip-backup was given" if run.options.skip_backup else "there was no database before this deploy"
        return DatabaseNotRestored(f"{failure}\nNo snapshot to restore ({why}): check {conn.label()} by hand")
    try:
        run.timed("restore_db", lambda: restore_db(run.remote, conn, run.app.python, run.layout, release_id))
    except ShipfabError as exc:
        return DatabaseNotRestored(f"{failure}\nRestoring {backup} failed too, the database may be half-migrated: {exc}. "
                                   f"Restore it by hand: fab -H {host} restore-db --release {release_id} --yes")
    return StepFailed(f"{failure}\nThe database was restored from {backup}, taken just before the migration.")


def undo_note(run: HostRun) -> str:
    """What a failed deploy's undo leaves in the database (its code goes back, its schema does not)."""
    if not run.release.migrated:
        return ""
    return (f" The database keeps the migrations of {run.release.id}; to take it back too: "
            f"fab -H {run.remote.host} restore-db --release {run.release.id} --yes")


def prune_backups(run: HostRun, current: str) -> str:
    db = run.app.database
    if db is None or not handles_database(run.target, run.primary):
        return ""
    doomed = prune_snapshots(run.remote, run.layout, db.engine, db.keep_backups, current)
    return f", {len(doomed)} old snapshot(s)" if doomed else ""


# ---------------------------------------------------------------- rollback


def rollback_snapshot(records: list[dict[str, Any]], left: str, target: str) -> dict[str, Any] | None:
    """The record whose snapshot holds the database as it was while `target` served: the left
    release's when it was deployed over `target`, else the newest deploy over `target` with one."""
    over = [r for r in records if r.get("previous") == target and r.get("backup")]
    return next((r for r in over if r["release"] == left), over[-1] if over else None)


def prepare_rollback(runs: list[HostRun], to: str | None, yes: bool) -> None:
    """--with-db: find and check each snapshot before anything changes, then ask."""
    plans = []
    for run in runs:
        if not handles_database(run.target, run.primary):
            continue
        state = read_state(run.remote, run.layout)
        target = rollback_target(state, to, run.remote.host)
        record = rollback_snapshot(release_log.read_log(run.remote, run.layout), state.current, target)
        if record is None:
            raise UsageError(f"{run.remote.host}: no database snapshot was taken while {target} was serving, so "
                             f"there is none to go back to; roll back without --with-db")
        conn = connection(run.remote, run.target)
        check_snapshot(run.remote, conn, run.app.python, run.layout, snapshot_id(record["backup"]))
        plans.append(f"{run.remote.host}: {conn.label()} from {record['backup']}")
    if not plans:
        raise UsageError("--with-db: none of these hosts has a database configured")
    if not runs[0].options.dry_run:
        confirm("Roll back and restore the database (" + "; ".join(plans) + ")? Writes since the snapshot are lost.", yes)


def after_rollback(run: HostRun, left: str, target: str, with_db: bool) -> str:
    """Once `target` serves again: restore its snapshot (--with-db), or warn when `left` ran
    migrations. Returns the restored snapshot's path ("" when none)."""
    if not handles_database(run.target, run.primary):
        return ""
    records = release_log.read_log(run.remote, run.layout)
    if with_db:
        record = rollback_snapshot(records, left, target)
        if record is None:  # checked by prepare_rollback; the log changed since?
            raise StepFailed(f"{run.remote.host}: no snapshot to restore for {target}")
        conn = connection(run.remote, run.target)
        sid = snapshot_id(record["backup"])
        run.timed("restore_db", lambda: restore_db(run.remote, conn, run.app.python, run.layout, sid))
        return str(record["backup"])
    left_record = next((r for r in records if r.get("release") == left), {})
    if left_record.get("migrated"):
        taken = f"snapshot {left_record['backup']} was taken before them" if left_record.get("backup") else "no snapshot"
        run.printer.line(f"warning: release {left} ran database migrations ({taken}): the schema may be ahead of "
                         f"the code of {target}. To take the database back too: "
                         f"fab -H {run.remote.host} restore-db --release {left} --yes", run.remote.host, level=0)
    return ""
