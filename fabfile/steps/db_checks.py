"""db_checks: is the database what the code expects? Connectivity and server version,
required extensions with minimum versions, columns with their types, indexes, and
pending alembic migrations (alembic_version against the release's heads).

PostgreSQL is asked from the controller with psycopg2 through an SSH tunnel (Fabric's
`forward_local`) to the database host and port as the server sees them; SQLite by a
small script on the host. Gathering the facts is separate from judging them: the
`*_check` functions are pure, and every failure says what was expected and what was found.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paramiko
import psycopg2

from ..db import DbConn, connection
from ..errors import ShipfabError
from ..inventory import DbChecks, Target
from ..layout import Layout
from ..remote import Remote
from . import preflight  # its Check; a module import, so preflight may import this file too
from .host_state import read_state

q = shlex.quote

# Spellings of the same type: what a person writes -> what the database reports.
TYPE_ALIASES = {
    "int": "integer", "int4": "integer", "int8": "bigint", "int2": "smallint", "serial": "integer",
    "varchar": "character varying", "bool": "boolean", "float8": "double precision", "float4": "real",
    "timestamptz": "timestamp with time zone", "timestamp": "timestamp without time zone",
}

SQLITE_FACTS = """\
import json, os, sqlite3, sys
path, tables = sys.argv[1], json.loads(sys.argv[2])
if not os.path.exists(path):
    print("null")
    sys.exit()
db = sqlite3.connect(path)
def has(t):
    return db.execute("select 1 from sqlite_master where type = 'table' and name = ?", (t,)).fetchone()
def columns(t):
    return dict(db.execute("select name, type from pragma_table_info(?)", (t,)).fetchall()) if has(t) else None
def indexes(t):
    return [r[0] for r in db.execute("select name from pragma_index_list(?)", (t,))] if has(t) else None
alembic = [r[0] for r in db.execute("select version_num from alembic_version")] if has("alembic_version") else None
print(json.dumps({"server": "SQLite " + sqlite3.sqlite_version, "extensions": {},
                  "tables": {t: columns(t) for t in tables}, "indexes": {t: indexes(t) for t in tables},
                  "alembic": alembic}))
"""


@dataclass(frozen=True)
class Facts:
    """What the database has, for the tables the checks name."""

    server: str
    extensions: dict[str, str]  # name -> installed version
    tables: dict[str, dict[str, str] | None]  # table -> {column: type}; None: no such table
    indexes: dict[str, list[str] | None]  # table -> index names; None: no such table
    alembic: list[str] | None  # rows of alembic_version; None: no such table


def checked_tables(checks: DbChecks) -> list[str]:
    return sorted({c.rsplit(".", 1)[0] for c in checks.columns} | set(checks.indexes))


# ---------------------------------------------------------------- judging (pure)


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.8.1' -> (0, 8, 1); '15.4 (Debian 15.4-1)' -> (15, 4)."""
    parts = []
    for part in version.split(" ", 1)[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def normalize_type(name: str) -> str:
    name = " ".join(name.lower().split())
    base, paren, rest = name.partition("(")
    return TYPE_ALIASES.get(base.strip(), base.strip()) + (paren + rest if paren else "")


def type_matches(expected: str, found: str) -> bool:
    """`vector` matches `vector(1536)`; `vector(1536)` only matches itself."""
    want, got = normalize_type(expected), normalize_type(found)
    return want == got if "(" in want else want == got.split("(", 1)[0].strip()


def extension_check(name: str, minimum: str, installed: dict[str, str]) -> preflight.Check:
    title = f"extension {name}"
    want = f"{name} >= {minimum}" if minimum else name
    if name not in installed:
        others = ", ".join(f"{k} {v}" for k, v in sorted(installed.items())) or "none"
        return preflight.Check(title, False, f"expected {want}, found it not installed (installed: {others})")
    found = installed[name]
    if minimum and version_tuple(found) < version_tuple(minimum):
        return preflight.Check(title, False, f"expected {want}, found {name} {found}")
    return preflight.Check(title, True, f"{name} {found}" + (f" (>= {minimum})" if minimum else ""))


def column_check(column: str, expected: str, tables: dict[str, dict[str, str] | None]) -> preflight.Check:
    table, name = column.rsplit(".", 1)
    cols = tables.get(table)
    title = f"column {column}"
    if cols is None:
        return preflight.Check(title, False, f"expected type {expected}, found no table {table}")
    if name not in cols:
        return preflight.Check(title, False, f"expected type {expected}, found no such column ({table} has: {', '.join(cols)})")
    if not type_matches(expected, cols[name]):
        return preflight.Check(title, False, f"expected type {expected}, found {cols[name]}")
    return preflight.Check(title, True, f"type {cols[name]}")


def index_check(table: str, expected: tuple[str, ...], indexes: dict[str, list[str] | None]) -> preflight.Check:
    found = indexes.get(table)
    title = f"indexes on {table}"
    if found is None:
        return preflight.Check(title, False, f"expected {', '.join(expected)}, found no table {table}")
    missing = [i for i in expected if i not in found]
    if missing:
        return preflight.Check(title, False, f"expected {', '.join(expected)}, missing {', '.join(missing)} "
                                   f"(found: {', '.join(sorted(found)) or 'none'})")
    return preflight.Check(title, True, f"{', '.join(expected)} present")


def alembic_check(at: list[str] | None, history: tuple[list[str], list[str]], release: str, host: str) -> preflight.Check:
    """alembic_version rows against the release's migration scripts: (all revisions, heads)."""
    known, heads = history
    title = "migrations"
    want = ", ".join(heads) or "(none)"
    if at is None:
        return preflight.Check(title, not heads, f"no alembic_version table: never migrated; release {release} head is {want}")
    unknown = [v for v in at if v not in known]
    if unknown:
        return preflight.Check(title, False, f"the database is at {', '.join(at)}, which release {release} does not have "
                                   f"(its head: {want}): the schema is ahead of the code")
    if sorted(at) == sorted(heads):
        return preflight.Check(title, True, f"at head {want}")
    return preflight.Check(title, False, f"pending: the database is at {', '.join(at) or '(empty)'}, release {release} head "
                               f"is {want} (run: fab -H {host} migrate)")


def evaluate(checks: DbChecks, facts: Facts) -> list[preflight.Check]:
    results = [extension_check(n, v, facts.extensions) for n, v in checks.extensions.items()]
    results += [column_check(c, t, facts.tables) for c, t in checks.columns.items()]
    results += [index_check(t, names, facts.indexes) for t, names in checks.indexes.items()]
    return results


def parse_history(stdout: str) -> tuple[list[str], list[str]]:
    """(every revision, the heads) from `alembic history` lines like `0001 -> 0002 (head), add price`."""
    known, heads = [], []
    for line in stdout.splitlines():
        if " -> " not in line:
            continue
        rev = line.split(" -> ", 1)[1].split(",", 1)[0].split()[0]
        known.append(rev)
        if "(head)" in line:
            heads.append(rev)
    return sorted(known), sorted(heads)


# ---------------------------------------------------------------- gathering


def history_cmd(layout: Layout, release_id: str, config: str) -> str:
    rel = layout.release(release_id)
    return f"cd {q(rel)} && {q(rel + '/.venv/bin/alembic')} -c {q(config)} history 2>&1"


def sqlite_facts_cmd(python: str, conn: DbConn, tables: list[str]) -> str:
    return f"{q(python)} -c {q(SQLITE_FACTS)} {q(conn.path)} {q(json.dumps(tables))}"


def pg_facts(cur: Any, tables: list[str]) -> Facts:
    """Ask an open psycopg2 cursor for the facts about `tables`."""
    cur.execute("SELECT current_setting('server_version')")
    server = f"PostgreSQL {cur.fetchone()[0]}"
    cur.execute("SELECT extname, extversion FROM pg_extension")
    extensions = dict(cur.fetchall())
    columns: dict[str, dict[str, str] | None] = {}
    indexes: dict[str, list[str] | None] = {}
    for table in tables:
        cur.execute("SELECT to_regclass(%s)::oid", (table,))
        oid = cur.fetchone()[0]
        if oid is None:
            columns[table] = indexes[table] = None
            continue
        cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (oid,))
        columns[table] = dict(cur.fetchall())
        cur.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = %s "
                    "ORDER BY 1", (oid,))
        indexes[table] = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
    alembic = None
    if cur.fetchone()[0]:
        cur.execute("SELECT version_num FROM alembic_version")
        alembic = [r[0] for r in cur.fetchall()]
    return Facts(server, extensions, columns, indexes, alembic)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def reach(remote: Remote, conn: DbConn) -> Iterator[tuple[str, int]]:
    """(host, port) where the controller reaches the database: an SSH tunnel to it as the
    server sees it (a socket-only database is reached at localhost), or directly for the sandbox."""
    if remote.target.local:
        yield conn.host, conn.port
        return
    port = free_port()
    with remote.conn.forward_local(port, conn.port, conn.host or "localhost", "127.0.0.1"):  # type: ignore[union-attr]
        yield "127.0.0.1", port


def connect(host: str, port: int, conn: DbConn, timeout: float = 10) -> Any:
    """psycopg2 connection, retried while the tunnel's listener comes up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg2.connect(host=host or None, port=port, user=conn.user or None, password=conn.password or None,
                                    dbname=conn.name, connect_timeout=int(timeout), application_name="shipfab check",
                                    options="-c default_transaction_read_only=on")
        except psycopg2.OperationalError as exc:
            if "refused" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def gather(remote: Remote, target: Target, conn: DbConn) -> Facts | None:
    """The facts, or None when a SQLite file does not exist."""
    tables = checked_tables(target.app.database.checks)  # type: ignore[union-attr]
    if conn.engine == "sqlite":
        out = remote.run(sqlite_facts_cmd(target.app.python, conn, tables), change=False).stdout
        data = json.loads(out.strip().splitlines()[-1])
        return Facts(**data) if data else None
    with reach(remote, conn) as (host, port):
        db = connect(host, port, conn)
        try:
            with db.cursor() as cur:
                return pg_facts(cur, tables)
        finally:
            db.close()


def release_history(remote: Remote, layout: Layout, release_id: str, config: str) -> tuple[list[str], list[str]]:
    res = remote.run(history_cmd(layout, release_id, config), change=False, warn=True)
    if not res.ok:
        raise ShipfabError(f"`alembic history` failed in release {release_id}: {res.stdout.strip()[-300:]}")
    return parse_history(res.stdout)


def run_checks(remote: Remote, target: Target, release_id: str | None = None) -> list[preflight.Check]:
    """All database checks of the target's app ([] when it has no database); never raises.
    Migrations are compared with `release_id` (default: the current release)."""
    db = target.app.database
    if db is None:
        return []
    try:
        conn = connection(remote, target)
        facts = gather(remote, target, conn)
    except (ShipfabError, psycopg2.Error, paramiko.SSHException, OSError, ValueError) as exc:
        return [preflight.Check("database", False, f"cannot connect: {' '.join(str(exc).split()) or type(exc).__name__}")]
    if facts is None:
        if not read_state(remote, Layout(target.app.deploy_to)).current:  # a first deploy creates it
            return [preflight.Check("database", True, f"no SQLite file yet ({conn.path}); nothing is deployed")]
        return [preflight.Check("database", False, f"expected a SQLite database, found no file {conn.path}")]
    results = [preflight.Check("database", True, f"{facts.server}, {conn.label()}")] + evaluate(db.checks, facts)
    if db.checks.alembic:
        layout = Layout(target.app.deploy_to)
        release = release_id or read_state(remote, layout).current
        if not release:
            return results + [preflight.Check("migrations", True, "nothing deployed yet: nothing to compare with")]
        try:
            history = release_history(remote, layout, release, db.checks.alembic)
        except ShipfabError as exc:
            return results + [preflight.Check("migrations", False, str(exc))]
        results.append(alembic_check(facts.alembic, history, release, remote.host))
    return results
