"""restore_db: put a verified snapshot back, and say which writes that loses.

First, read-only: the snapshot must exist, have its `.ok` (it was verified when taken),
still match the checksum recorded then, and read back. Anything else is refused. The
snapshot's mtime is when its dump started: every restore prints "writes made since
<then> UTC (<age> ago) are lost", with or without --yes.

PostgreSQL: one transaction for everything, so the app's requests wait on the table
locks instead of failing: the DROPs of relations created after the snapshot (say, by the
half-applied migration being undone; `--clean` would leave them) followed by
`pg_restore --clean --if-exists` as SQL, piped into `psql --single-transaction -v
ON_ERROR_STOP=1`; if pg_restore fails half-way, a final RAISE makes psql roll it all
back. EXTENSION entries are left out (extensions stay as installed: an app's role
usually may not drop them). SQLite: the snapshot is copied over the live file with the
online backup API.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime

from ..db import DbConn, env_lines, run_with_db
from ..errors import StepFailed, UsageError
from ..layout import Layout
from ..remote import Remote
from .backup_db import OK, SQLITE_COPY, list_snapshots, snapshot_path, verify_cmd

q = shlex.quote

# Relations in user schemas that no extension owns, as JSON [[relkind, schema, name], ...].
RELATIONS_SQL = (
    "SELECT coalesce(json_agg(json_build_array(c.relkind, n.nspname, c.relname)), '[]') "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
    "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
    "AND d.deptype = 'e')"
)
KINDS = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
TOC_ENTRY = re.compile(r"^\d+; \d+ \d+ (TABLE(?! DATA)|VIEW|MATERIALIZED VIEW|SEQUENCE(?! OWNED| SET)) (\S+) (\S+)")
# pg_restore --list lines of extensions and their comments: left out of the restore.
EXTENSION_ENTRY = r"^[0-9]+; [0-9]+ [0-9]+ (EXTENSION|COMMENT - EXTENSION) "
FILE = '"$f"'  # the snapshot, in the scripts below
# Fed to psql after pg_restore's SQL when pg_restore failed: the whole transaction rolls back.
ABORT_SQL = "DO $$BEGIN RAISE EXCEPTION 'pg_restore failed: nothing was restored'; END$$;"


@dataclass(frozen=True)
class Checked:
    """A snapshot found fit to restore: where it is, when it was taken, and the host's clock now."""

    path: str
    taken: float
    now: float
    inventory: str = ""  # PostgreSQL, when asked: its table of contents, `---`, the relations now

    def lost_writes(self) -> str:
        return lost_writes(self.taken, self.now)


def age(seconds: float) -> str:
    """12 s / 4 min / 3.5 h / 2.0 days."""
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def lost_writes(taken: float, now: float) -> str:
    when = datetime.fromtimestamp(taken, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"writes made since {when} UTC ({age(now - taken)} ago) are lost"


def check_script(conn: DbConn, python: str, path: str, inventory: bool = False) -> str:
    """Read-only. First line: `OK <taken> <now>` (the snapshot's mtime and the host's clock),
    MISSING, UNVERIFIED, `CORRUPT <recorded> <now>` or UNREADABLE.
    With `inventory` (PostgreSQL), after OK: the snapshot's table of contents, `---`, and the
    relations in the database now (what the restore must drop first)."""
    lines = [
        *env_lines(conn),
        f"f={q(path)}",
        'if [ ! -f "$f" ]; then echo MISSING; exit 0; fi',
        f'if [ ! -f "$f{OK}" ]; then echo UNVERIFIED; exit 0; fi',
        f'want=$(cat "$f{OK}"); got=$(cksum < "$f")',
        'if [ "$got" != "$want" ]; then echo "CORRUPT $want $got"; exit 0; fi',
    ]
    ok = 'echo "OK $(stat -c %Y "$f") $(date +%s)"'
    if conn.engine == "sqlite":
        return "\n".join(lines + [f"{verify_cmd(conn, python, FILE)} 2>/dev/null || {{ echo UNREADABLE; exit 0; }}", ok])
    lines += [f'toc=$({conn.tool("pg_restore")} --list "$f" 2>/dev/null) || {{ echo UNREADABLE; exit 0; }}', ok]
    if inventory:
        lines += ['printf \'%s\\n\' "$toc"', "echo ---",
                  f"{conn.tool('psql')} -X -A -t -q -v ON_ERROR_STOP=1 -c {q(RELATIONS_SQL)}"]
    return "\n".join(lines)


def refusal(status: str, host: str, path: str, available: list[str]) -> str | None:
    """Why a snapshot must not be restored (None: it may)."""
    word, *rest = status.split() or ["?"]
    if word == "OK":
        return None
    if word == "MISSING":
        return f"{host}: snapshot {path} does not exist; snapshots here: {', '.join(available) or '(none)'}"
    if word == "UNVERIFIED":
        return (f"{host}: snapshot {path} was never verified (no {path}{OK}: its backup did not finish); "
                "refusing to restore it")
    if word == "CORRUPT" and len(rest) == 4:
        return (f"{host}: snapshot {path} is corrupted: its checksum is now {rest[2]} ({rest[3]} bytes), it was "
                f"{rest[0]} ({rest[1]} bytes) when verified; refusing to restore it")
    return f"{host}: snapshot {path} does not read back ({status.strip() or 'no answer'}); refusing to restore it"


def extra_relations(toc: str, relations_json: str) -> list[tuple[str, str, str]]:
    """(kind, schema, name) of relations in the database that the snapshot does not have."""
    in_snapshot = {(m[2], m[3]) for m in map(TOC_ENTRY.match, toc.splitlines()) if m}
    found = json.loads(relations_json or "[]")
    return [(KINDS[k], s, n) for k, s, n in found if k in KINDS and (s, n) not in in_snapshot]


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def drop_sql(extras: list[tuple[str, str, str]]) -> str:
    return " ".join(f"DROP {kind} IF EXISTS {ident(schema)}.{ident(name)} CASCADE;" for kind, schema, name in extras)


def pg_restore_script(conn: DbConn, path: str, drops: str) -> str:
    """The drops and the restore, in one transaction (see the module docstring)."""
    drop = f"printf '%s\\n' {q(drops)}; " if drops else ""
    return "\n".join([
        *env_lines(conn),
        f"f={q(path)}",
        f'{conn.tool("pg_restore")} --list "$f" | grep -v -E {q(EXTENSION_ENTRY)} > "$f.toc" || exit 1',
        f'{{ {drop}{conn.tool("pg_restore")} --clean --if-exists --no-owner --use-list="$f.toc" --file=- "$f" '
        f"|| echo {q(ABORT_SQL)}; }} | {conn.tool('psql')} -X -q --single-transaction -v ON_ERROR_STOP=1 >/dev/null; rc=$?",
        'rm -f "$f.toc"; exit $rc',
    ])


def sqlite_restore_cmd(conn: DbConn, python: str, path: str) -> str:
    return f"mkdir -p \"$(dirname {q(conn.path)})\" && {q(python)} -c {q(SQLITE_COPY)} {q(path)} {q(conn.path)}"


def check_snapshot(remote: Remote, conn: DbConn, python: str, layout: Layout, snapshot_id: str,
                   inventory: bool = False) -> Checked:
    """The snapshot once it is fit to restore; UsageError saying why not otherwise."""
    path = snapshot_path(layout, snapshot_id, conn.engine)
    status, _, rest = run_with_db(remote, conn, check_script(conn, python, path, inventory), change=False).stdout.partition("\n")
    available = list(list_snapshots(remote, layout, conn.engine)) if status == "MISSING" else []
    why = refusal(status, remote.host, path, available)
    if why:
        raise UsageError(why)
    _, taken, now = status.split()
    return Checked(path, float(taken), float(now), rest)


def restore_db(remote: Remote, conn: DbConn, python: str, layout: Layout, snapshot_id: str) -> str:
    """Restore the snapshot `snapshot_id` (checked first), saying which writes are lost; returns a short detail."""
    snap = check_snapshot(remote, conn, python, layout, snapshot_id, inventory=conn.engine != "sqlite")
    remote.printer.line(f"restoring {snap.path}: {snap.lost_writes()}", remote.host, level=0)
    if conn.engine == "sqlite":
        remote.run(sqlite_restore_cmd(conn, python, snap.path))
        return f"restored {snap.path}"
    toc, _, relations = snap.inventory.partition("\n---\n")
    extras = extra_relations(toc, relations.strip())
    res = run_with_db(remote, conn, pg_restore_script(conn, snap.path, drop_sql(extras)), warn=True)
    dropped = ", ".join(f"{s}.{n}" for _, s, n in extras)
    if not res.ok:
        raise StepFailed(f"{remote.host}: the restore of {snap.path} failed (exit {res.exited}) and was rolled back as one "
                         f"transaction: nothing changed:\n{(res.stderr or res.stdout).strip()[-800:]}")
    return f"restored {snap.path}" + (f"; dropped {dropped} (not in the snapshot)" if extras else "")
