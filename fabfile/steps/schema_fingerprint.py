"""schema_fingerprint: one read-only query that says whether a migration changed the database.

PostgreSQL: an md5 over the relations, columns (type, not null, default), indexes and
constraints of the user schemas, plus the alembic_version rows. SQLite: over every
`sqlite_master` entry (its SQL) plus the alembic_version rows. Taken right before a
migration and again after it (or in its undo): equal fingerprints mean the schema is as
it was, so a failed migration rolled itself back and there is nothing to restore. Data
changes are not part of it (a migration that only rewrites rows and keeps no version
table is invisible to it).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..db import DbConn, env_lines, run_with_db
from ..errors import StepFailed
from ..remote import Remote

q = shlex.quote
NO_TABLE = "-"  # versions when there is no alembic_version table

# `<md5>|<versions>`: versions are the alembic_version rows joined by commas, "-" without the table.
PG_SQL = r"""WITH rels AS (
  SELECT c.oid, n.nspname || '.' || c.relname AS name, c.relkind FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'
  AND n.nspname NOT LIKE 'pg\_temp%' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'i', 'I')
), parts AS (
  SELECT 'rel ' || name || ' ' || relkind::text AS line FROM rels
  UNION ALL
  SELECT 'col ' || r.name || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  UNION ALL
  SELECT 'idx ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels r ON r.oid = i.indrelid
  UNION ALL
  SELECT 'con ' || r.name || ' ' || co.conname || ' ' || pg_get_constraintdef(co.oid)
  FROM pg_constraint co JOIN rels r ON r.oid = co.conrelid
), versions AS (
  SELECT CASE WHEN to_regclass('alembic_version') IS NULL THEN '-' ELSE coalesce((xpath('/row/v/text()', query_to_xml(
    'SELECT string_agg(version_num::text, '','' ORDER BY version_num) AS v FROM alembic_version', false, true, '')))[1]::text,
    '') END AS v
)
SELECT md5((SELECT coalesce(string_agg(line, E'\n' ORDER BY line), '') FROM parts) || E'\n' || v) || '|' || v FROM versions"""

SQLITE_SCRIPT = """\
import hashlib, os, sqlite3, sys
if not os.path.exists(sys.argv[1]):
    print("none|-")
    sys.exit()
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
rows = db.execute("select type, name, tbl_name, coalesce(sql, '') from sqlite_master order by 1, 2").fetchall()
has = any(r[:2] == ("table", "alembic_version") for r in rows)
v = ",".join(sorted(r[0] for r in db.execute("select version_num from alembic_version"))) if has else "-"
text = "\\n".join("|".join(r) for r in rows) + "\\n" + v
print(hashlib.md5(text.encode()).hexdigest() + "|" + v)
"""


@dataclass(frozen=True)
class Fingerprint:
    digest: str
    versions: str  # alembic_version rows, "a,b"; "" none; "-" no such table
    at: float  # the host's clock when it was taken (epoch seconds)

    def describe(self) -> str:
        return {NO_TABLE: "no alembic_version", "": "alembic_version empty"}.get(self.versions, f"alembic {self.versions}")


def fingerprint_script(conn: DbConn, python: str) -> str:
    """Prints `FINGERPRINT <now> <md5>|<versions>`."""
    if conn.engine == "sqlite":
        query = f"{q(python)} -c {q(SQLITE_SCRIPT)} {q(conn.path)}"
    else:
        query = f"{conn.tool('psql')} -X -A -t -q -v ON_ERROR_STOP=1 -c {q(PG_SQL)}"
    return "\n".join([*env_lines(conn), "now=$(date +%s.%N)", f"fp=$({query}) || exit 1", 'echo "FINGERPRINT $now $fp"'])


def parse_fingerprint(stdout: str) -> Fingerprint | None:
    for line in stdout.splitlines():
        words = line.split(" ", 2)
        if words[0] == "FINGERPRINT" and len(words) == 3 and "|" in words[2]:
            digest, _, versions = words[2].strip().partition("|")
            return Fingerprint(digest, versions, float(words[1]))
    return None


def fingerprint(remote: Remote, conn: DbConn, python: str) -> Fingerprint:
    """The schema's fingerprint now. Read-only, but it waits for a command still running on the
    host (a migration orphaned by a dropped link) before it looks."""
    res = run_with_db(remote, conn, remote.serialized(fingerprint_script(conn, python)), change=False, warn=True,
                      show_output=False)
    found = parse_fingerprint(res.stdout)
    if found is None:
        raise StepFailed(f"{remote.host}: cannot read the schema fingerprint of {conn.label()} "
                         f"(exit {res.exited}): {(res.stderr or res.stdout).strip()[-300:]}")
    return found
