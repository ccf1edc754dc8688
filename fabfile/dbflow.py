"""The database half of the flows, for any stack.

Deploy: `backup_db` right before `migrate`, both before the switch; for PostgreSQL once,
on the primary host of the run, for SQLite on every host. `migrate` takes the schema's
fingerprint, registers its undo, then runs the migration. The undo decides from the
database as it finds it: a migration that completed (a later step failed) is kept and
the exact restore command is left as a note; otherwise an unchanged fingerprint means the
migration rolled itself back (nothing to restore), a changed one is restored from the
snapshot, and a restore that cannot be made is DatabaseNotRestored with the command.
Rollback: `--with-db` puts back the snapshot taken before the left release's migrations
(checked and confirmed before anything changes); a plain rollback warns when the release
it leaves applied migrations. Every restore says which writes it loses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .context import HostRun
from .db import DatabaseNotRestored, DbConn, confirm, connection, handles_database
from .errors import ShipfabError, StepFailed, UsageError
from .steps.backup_db import backup_db as take_snapshot
from .steps.env_file import read_remote_env
from .steps.migrate import migrate, pg_env
from .steps.release_log import fold
from .steps.restore_db import check_snapshot, restore_db
from .steps.schema_fingerprint import Fingerprint, fingerprint

MIGRATE = "migrate"  # the step's name in every stack: in run.done once the migration completed


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


def restore_command(run: HostRun) -> str:
    return f"fab -H {run.host} restore-db --release {run.release.id} --yes"


def app_env(run: HostRun) -> dict[str, str]:
    """The host's .env as python-dotenv parses it (read under the lock with the state)."""
    return run.state.env or read_remote_env(run.remote, run.layout)


# ---------------------------------------------------------------- deploy


def backup_step(run: HostRun) -> str:
    """Deploy step backup_db: a verified snapshot named after the new release, right before `migrate`."""
    skip = _skip(run, "the shared database is backed up")
    if skip:
        return skip
    if run.options.skip_backup:
        return "skipped (--skip-backup): this release has no snapshot, a failed migration cannot be undone"
    conn = connection(run.remote, run.target, app_env(run))
    snap = take_snapshot(run.remote, conn, run.app.python, run.layout, run.release.id)
    if snap is None:
        return f"no database yet at {conn.path}: nothing to back up"
    run.release.backup, run.release.backup_at = snap.path, snap.taken_at
    return snap.describe()


def migrate_step(run: HostRun, wrap: Callable[[HostRun, str, list[str]], str] | None = None) -> str:
    """Deploy step migrate: fingerprint, register the undo, run the app's command; `migrated`
    says whether it really changed the schema. `wrap(run, command, env names)` runs it
    elsewhere (the compose stack: in a one-off container), the environment passed by name."""
    skip = _skip(run, "migrations run once")
    db = run.app.database
    if skip or db is None or not db.migrate:
        return skip or "no migrate command configured"
    conn = connection(run.remote, run.target, app_env(run))
    before = fingerprint(run.remote, conn, run.app.python)
    taken = run.release.backup_at
    window = f"snapshot {before.at - taken:.1f} s before the migration" if taken else "no snapshot before the migration"
    run.printer.line(f"migrate: {window}", run.host)
    run.on_undo("restore_db", lambda: undo_migration(run, conn, before))
    command = wrap(run, db.migrate, sorted({*pg_env(conn), *app_env(run)})) if wrap else db.migrate
    detail = migrate(run.remote, conn, run.layout, run.release.id, command, run.app.python, app_env(run),
                     shown=db.migrate)
    if run.options.dry_run:
        return detail
    after = fingerprint(run.remote, conn, run.app.python)
    run.release.migrated = after.digest != before.digest
    change = changed_schema(before, after) if run.release.migrated else "schema unchanged"
    return f"{detail}; {change}"


def changed_schema(before: Fingerprint, after: Fingerprint) -> str:
    """`alembic 0001 -> alembic 0002`; the digests too when the versions do not tell (no alembic)."""
    if before.describe() == after.describe():
        return f"{before.describe()}, schema {before.digest[:8]} -> {after.digest[:8]}"
    return f"{before.describe()} -> {after.describe()}"


def undo_migration(run: HostRun, conn: DbConn, before: Fingerprint) -> str:
    """The migrate step's undo: keep a completed migration (with a note), else restore only
    when the schema really changed; DatabaseNotRestored (with the command) when it cannot."""
    if MIGRATE in run.done:
        if not run.release.migrated:
            return "the migration changed nothing: nothing to restore"
        back = (f"to take it back too: {restore_command(run)}" if run.release.backup else
                "no snapshot was taken before them (there was no database yet, or --skip-backup)")
        run.notes.append(f"the database keeps the migrations of {run.release.id} (the code went back, the schema did "
                         f"not); {back}")
        return "kept the migrated schema (see the note)"
    now = fingerprint(run.remote, conn, run.app.python)
    if now.digest == before.digest:
        return "the migration rolled itself back (schema unchanged): nothing to restore"
    changed = f"the migration changed the schema ({changed_schema(before, now)})"
    if not run.release.backup:
        why = "--skip-backup was given" if run.options.skip_backup else "there was no database before this deploy"
        raise DatabaseNotRestored(f"{run.host}: {changed} and there is no snapshot to restore ({why}): "
                                  f"check {conn.label()} by hand")
    try:
        detail = restore_db(run.remote, conn, run.app.python, run.layout, snapshot_id(run.release.backup))
    except ShipfabError as exc:
        raise DatabaseNotRestored(f"{run.host}: {changed} and restoring {run.release.backup} failed: {exc}. "
                                  f"Restore it by hand: {restore_command(run)}") from None
    run.notes.append(f"The database was restored, as {changed}: {detail}.")
    return f"{changed}: {detail}"


# ---------------------------------------------------------------- rollback


def rollback_snapshot(records: list[dict[str, Any]], left: str, target: str) -> dict[str, Any] | None:
    """The record whose snapshot holds the database as it was while `target` served: the left
    release's when it was deployed over `target`, else the newest deploy over `target` with one."""
    over = [r for r in records if r.get("previous") == target and r.get("backup")]
    return next((r for r in over if r["release"] == left), over[-1] if over else None)


def _records(run: HostRun) -> list[dict[str, Any]]:
    """The release log (read with the state under the lock), one record per release, oldest first."""
    return list(fold(run.state.events).values())


def prepare_rollback(runs: list[HostRun], yes: bool) -> None:
    """--with-db, under the lock, once each run's `release` names its target (`id`) and the
    release it leaves (`previous`): find and check each snapshot before anything changes,
    say which writes are lost, then ask (unless --yes)."""
    plans = []
    for run in runs:
        if not handles_database(run.target, run.primary):
            continue
        target = run.release.id
        record = rollback_snapshot(_records(run), run.release.previous, target)
        if record is None:
            raise UsageError(f"{run.host}: no database snapshot was taken while {target} was serving, so "
                             f"there is none to go back to; roll back without --with-db")
        conn = connection(run.remote, run.target, app_env(run))
        snap = check_snapshot(run.remote, conn, run.app.python, run.layout, snapshot_id(record["backup"]))
        plans.append(f"{run.host}: {conn.label()} from {snap.path}: {snap.lost_writes()}")
    if not plans:
        raise UsageError("--with-db: none of these hosts has a database configured")
    for plan in plans:
        runs[0].printer.line(f"rollback --with-db: {plan}", level=0)
    if not runs[0].options.dry_run:
        confirm("Roll back and restore the database (" + "; ".join(plans) + ")?", yes)


def after_rollback(run: HostRun, left: str, target: str, with_db: bool) -> str:
    """The rollback's last step, once `target` serves again: restore its snapshot (--with-db:
    `run.release.backup` is then the snapshot restored), or warn when `left` applied migrations."""
    if not handles_database(run.target, run.primary):
        return "no database on this host" if run.app.database is None else f"the database is handled on {run.primary}"
    records = _records(run)
    if with_db:
        record = rollback_snapshot(records, left, target)
        if record is None:  # checked by prepare_rollback under the same lock
            raise StepFailed(f"{run.host}: no snapshot to restore for {target}")
        conn = connection(run.remote, run.target, app_env(run))
        detail = restore_db(run.remote, conn, run.app.python, run.layout, snapshot_id(record["backup"]))
        run.release.backup = str(record["backup"])
        return detail
    left_record = next((r for r in records if r.get("release") == left), {})
    if not left_record.get("migrated"):
        return f"{left} applied no migrations: the database stays"
    taken = f"snapshot {left_record['backup']} was taken before them" if left_record.get("backup") else "no snapshot"
    run.printer.line(f"warning: release {left} applied database migrations ({taken}): the schema may be ahead of "
                     f"the code of {target}. To take the database back too: "
                     f"fab -H {run.host} restore-db --release {left} --yes", run.host, level=0)
    return "the database stays as it is (see the warning)"
