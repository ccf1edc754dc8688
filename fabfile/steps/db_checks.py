"""db_checks: is the database what the code expects? Connectivity and server version,
required extensions with minimum versions, columns with their types, indexes, and
pending alembic migrations (alembic_version against the release's heads).

PostgreSQL is asked from the controller with psycopg2 through an SSH tunnel (Fabric's
`forward_local`) to the database host and port as the server sees them; SQLite by a
small script on the host. psycopg2 is imported only when a PostgreSQL check really runs.
The release's revision graph is read by alembic's ScriptDirectory in the release's venv,
without running env.py: plain alembic (`script_location` in the ini) and Flask-Migrate
(`migrations/alembic.ini` without it: the ini's directory is the script directory). When
the check itself cannot be made (no ini, no alembic in the venv, a broken script
directory) it is a warning, never a failure. Gathering the facts is separate from judging
them: the `*_check` functions are pure, and every failure says what was expected and what
was found.
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

from ..context import Check, HostState
from ..db import DbConn, connection
from ..errors import ShipfabError
from ..inventory import DbChecks, Target
from ..layout import Layout
from ..remote import Remote
from .host_state import read_state

q = shlex.quote

# Spellings of the same type: what a person writes -> what the database reports.
TYPE_ALIASES = {
    "int": "integer", "int4": "integer", "int8": "bigint", "int2": "smallint", "serial": "integer",
    "varchar": "character varying", "bool": "boolean", "float8": "double precision", "float4": "real",
    "timestamptz": "timestamp with time zone", "timestamp": "timestamp without time zone",
}

# argv: the alembic ini (relative to the release). Prints {"known": [...], "heads": [...]} or {"error": "..."}.
HISTORY_SCRIPT = """\
import json, os, sys
try:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
    ini = os.path.abspath(sys.argv[1])
    if not os.path.isfile(ini):
        raise FileNotFoundError(f"no {sys.argv[1]} in the release")
    cfg = Config(ini)
    if not cfg.get_main_option("script_location"):  # Flask-Migrate: the ini sits in the script directory
        cfg.set_main_option("script_location", os.path.dirname(ini))
    script = ScriptDirectory.from_config(cfg)
    print(json.dumps({"known": [r.revision for r in script.walk_revisions()], "heads": list(script.get_heads())}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""

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


def extension_check(name: str, minimum: str, installed: dict[str, str]) -> Check:
    title = f"extension {name}"
    want = f"{name} >= {minimum}" if minimum else name
    if name not in installed:
        others = ", ".join(f"{k} {v}" for k, v in sorted(installed.items())) or "none"
        return Check(title, False, f"expected {want}, found it not installed (installed: {others})")
    found = installed[name]
    if minimum and version_tuple(found) < version_tuple(minimum):
        return Check(title, False, f"expected {want}, found {name} {found}")
    return Check(title, True, f"{name} {found}" + (f" (>= {minimum})" if minimum else ""))


def column_check(column: str, expected: str, tables: dict[str, dict[str, str] | None]) -> Check:
    table, name = column.rsplit(".", 1)
    cols = tables.get(table)
    title = f"column {column}"
    if cols is None:
        return Check(title, False, f"expected type {expected}, found no table {table}")
    if name not in cols:
        return Check(title, False, f"expected type {expected}, found no such column ({table} has: {', '.join(cols)})")
    if not type_matches(expected, cols[name]):
        return Check(title, False, f"expected type {expected}, found {cols[name]}")
    return Check(title, True, f"type {cols[name]}")


def index_check(table: str, expected: tuple[str, ...], indexes: dict[str, list[str] | None]) -> Check:
    found = indexes.get(table)
    title = f"indexes on {table}"
    if found is None:
        return Check(title, False, f"expected {', '.join(expected)}, found no table {table}")
    missing = [i for i in expected if i not in found]
    if missing:
        return Check(title, False, f"expected {', '.join(expected)}, missing {', '.join(missing)} "
                                   f"(found: {', '.join(sorted(found)) or 'none'})")
    return Check(title, True, f"{', '.join(expected)} present")


def alembic_check(at: list[str] | None, history: tuple[list[str], list[str]], release: str, host: str) -> Check:
    """alembic_version rows against the release's migration scripts: (all revisions, heads)."""
    known, heads = history
    title = "migrations"
    want = ", ".join(heads) or "(none)"
    if at is None:
        return Check(title, not heads, f"no alembic_version table: never migrated; release {release} head is {want}")
    unknown = [v for v in at if v not in known]
    if unknown:
        return Check(title, False, f"the database is at {', '.join(at)}, which release {release} does not have "
                                   f"(its head: {want}): the schema is ahead of the code")
    if sorted(at) == sorted(heads):
        return Check(title, True, f"at head {want}")
    return Check(title, False, f"pending: the database is at {', '.join(at) or '(empty)'}, release {release} head "
                               f"is {want} (run: fab -H {host} migrate)")


def evaluate(checks: DbChecks, facts: Facts) -> list[Check]:
    results = [extension_check(n, v, facts.extensions) for n, v in checks.extensions.items()]
    results += [column_check(c, t, facts.tables) for c, t in checks.columns.items()]
    results += [index_check(t, names, facts.indexes) for t, names in checks.indexes.items()]
    return results


def parse_history(stdout: str) -> tuple[list[str], list[str]]:
    """(every revision, the heads) from the JSON line HISTORY_SCRIPT prints; ShipfabError
    with its message when it could not read the graph."""
    data = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {"error": "no output"}
    if "error" in data:
        raise ShipfabError(data["error"])
    return sorted(data["known"]), sorted(data["heads"])


# ---------------------------------------------------------------- gathering


def history_cmd(layout: Layout, release_id: str, config: str) -> str:
    rel = layout.release(release_id)
    return f"cd {q(rel)} && {q(rel + '/.venv/bin/python')} -c {q(HISTORY_SCRIPT)} {q(config)} 2>&1"


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
    import psycopg2  # only here: the CLI does not pay for it unless a PostgreSQL check runs

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


def pg_gather(remote: Remote, conn: DbConn, tables: list[str]) -> Facts:
    """The facts of a PostgreSQL database; its own errors (driver, tunnel) as ShipfabError."""
    import paramiko
    import psycopg2

    try:
        with reach(remote, conn) as (host, port):
            db = connect(host, port, conn)
            try:
                with db.cursor() as cur:
                    return pg_facts(cur, tables)
            finally:
                db.close()
    except (psycopg2.Error, paramiko.SSHException) as exc:
        raise ShipfabError(" ".join(str(exc).split()) or type(exc).__name__) from None


def gather(remote: Remote, target: Target, conn: DbConn) -> Facts | None:
    """The facts, or None when a SQLite file does not exist."""
    tables = checked_tables(target.app.database.checks)  # type: ignore[union-attr]
    if conn.engine == "sqlite":
        out = remote.run(sqlite_facts_cmd(target.app.python, conn, tables), change=False).stdout
        data = json.loads(out.strip().splitlines()[-1])
        return Facts(**data) if data else None
    return pg_gather(remote, conn, tables)


def release_history(remote: Remote, layout: Layout, release_id: str, config: str) -> tuple[list[str], list[str]]:
    """(every revision, the heads) of the release's migrations; ShipfabError when they cannot be read."""
    res = remote.run(history_cmd(layout, release_id, config), change=False, warn=True)
    try:
        return parse_history(res.stdout)
    except ValueError:
        raise ShipfabError(f"exit {res.exited}: {res.stdout.strip()[-300:] or '(no output)'}") from None


def current_release(remote: Remote, target: Target) -> str:
    state, _ = read_state(remote, Layout(target.app.deploy_to))
    return state.current


def run_checks(remote: Remote, target: Target, release_id: str | None = None,
               state: HostState | None = None) -> list[Check]:
    """All database checks of the target's app ([] when it has no database); never raises.
    Migrations are compared with `release_id` (default: the current release). `state`: the
    host's state when the caller has read it already (its .env and `current` are not read again)."""
    db = target.app.database
    if db is None:
        return []

    def deployed() -> str:
        return state.current if state is not None else current_release(remote, target)

    try:
        conn = connection(remote, target, state.env if state is not None else None)
        facts = gather(remote, target, conn)
    except (ShipfabError, OSError, ValueError) as exc:
        return [Check("database", False, f"cannot connect: {' '.join(str(exc).split()) or type(exc).__name__}")]
    if facts is None:
        if not deployed():  # a first deploy creates it
            return [Check("database", True, f"no SQLite file yet ({conn.path}); nothing is deployed")]
        return [Check("database", False, f"expected a SQLite database, found no file {conn.path}")]
    results = [Check("database", True, f"{facts.server}, {conn.label()}")] + evaluate(db.checks, facts)
    if db.checks.alembic:
        layout = Layout(target.app.deploy_to)
        release = release_id or deployed()
        if not release:
            return results + [Check("migrations", True, "nothing deployed yet: nothing to compare with")]
        try:
            history = release_history(remote, layout, release, db.checks.alembic)
        except ShipfabError as exc:
            return results + [Check("migrations", True, f"not checked: cannot read the migrations of release {release} "
                                                        f"with {db.checks.alembic}: {exc}", warning=True)]
        results.append(alembic_check(facts.alembic, history, release, remote.host))
    return results
