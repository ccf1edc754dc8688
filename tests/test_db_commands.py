"""The database half without a database: exact command strings, parsing, the checks'
judgements, which snapshot a rollback restores, and hosts.toml validation."""

import json
import shlex
from pathlib import Path

import pytest

from fabfile import output
from fabfile.db import (
    DbConn,
    confirm,
    env_lines,
    handles_database,
    merge_settings,
    parse_database_url,
    primary,
    primary_first,
    secret_stdin,
)
from fabfile.dbflow import rollback_snapshot, snapshot_id
from fabfile.errors import InventoryError, ShipfabError, UsageError
from fabfile.inventory import DbChecks, parse_inventory
from fabfile.layout import Layout
from fabfile.steps import backup_db as b
from fabfile.steps import db_checks as c
from fabfile.steps import migrate as m
from fabfile.steps import restore_db as r
from fabfile.steps import schema_fingerprint as f

L = Layout("/srv/my app")
PG = DbConn("postgresql", name="app db", user="ann", host="db.internal", port=5433, password="pw",
            pg_bin="/usr/lib/postgresql/15/bin")
SQ = DbConn("sqlite", path="/srv/my app/shared/data/app.db")
ENV = ("IFS= read -r PGPASSWORD && export PGPASSWORD || exit 1\n"
       "export PGHOST=db.internal PGPORT=5433 PGUSER=ann PGDATABASE='app db'\n")
BIN = "/usr/lib/postgresql/15/bin"


def inventory(database: dict, hosts: dict | None = None):
    data = {"apps": {"web": {"stack": "gunicorn", "deploy_to": "/srv/web", "health": {"url": "http://h/health"},
                             "database": database}},
            "hosts": hosts or {"h": {"hostname": "10.0.0.5"}}}
    return parse_inventory(data, Path("hosts.toml"))


# ---------------------------------------------------------------- settings


def test_database_url_parsing_never_echoes_the_url():
    assert parse_database_url("postgresql+psycopg2://ann:p%40ss%2Fw@db.internal:5433/app") == {
        "user": "ann", "password": "p@ss/w", "host": "db.internal", "name": "app", "port": 5433}
    assert parse_database_url("postgres://db/app") == {"user": "", "password": "", "host": "db", "name": "app"}
    with pytest.raises(UsageError, match=r"^DATABASE_URL is not a PostgreSQL URL \(scheme 'mysql'\)$"):
        parse_database_url("mysql://ann:topsecret@db/app")
    with pytest.raises(UsageError) as exc:
        parse_database_url("postgresql://ann:topsecret@db:notaport/app")
    assert "topsecret" not in str(exc.value)


def test_hosts_toml_values_win_and_database_url_fills_the_rest():
    db = inventory({"name": "override", "port": 6000}).targets["h"].app.database
    url = parse_database_url("postgresql://ann:pw@db.internal:5433/app")
    conn = merge_settings(db, url, "/srv/web/shared")
    assert (conn.name, conn.user, conn.host, conn.port, conn.password) == ("override", "ann", "db.internal", 6000, "pw")
    assert merge_settings(inventory({}).targets["h"].app.database, {}, "/srv/web/shared").port == 5432
    assert "pw" not in repr(conn) and "pw" not in repr(db)
    sqlite = inventory({"engine": "sqlite", "path": "data/app.db"}).targets["h"].app.database
    assert merge_settings(sqlite, {}, "/srv/web/shared") == DbConn("sqlite", path="/srv/web/shared/data/app.db")


def test_password_goes_on_stdin_and_libpq_settings_in_the_environment():
    assert "\n".join(env_lines(PG)) + "\n" == ENV
    assert secret_stdin(PG) == "pw\n"
    trusted = DbConn("postgresql", name="app")
    assert env_lines(trusted) == ["export PGPORT=5432 PGDATABASE=app"] and secret_stdin(trusted) is None
    assert env_lines(SQ) == [] and secret_stdin(SQ) is None
    assert PG.tool("pg_dump") == f"{BIN}/pg_dump" and trusted.tool("pg_dump") == "pg_dump"
    assert PG.label() == "postgresql ann@db.internal:5433/app db"
    assert SQ.label() == "sqlite /srv/my app/shared/data/app.db"


def test_the_primary_host_handles_a_shared_database_every_host_its_sqlite_file():
    hosts = {"a": {"hostname": "a"}, "b": {"hostname": "b", "primary": True}, "c": {"hostname": "c"}}
    targets = list(inventory({}, hosts).targets.values())
    assert primary(targets).name == "b" and [t.name for t in primary_first(targets)] == ["b", "a", "c"]
    assert primary(targets[::2]).name == "a"  # none marked: the first
    assert [handles_database(t, "b") for t in targets] == [False, True, False]
    sqlite = list(inventory({"engine": "sqlite", "path": "app.db"}, hosts).targets.values())
    assert all(handles_database(t, "b") for t in sqlite)
    plain = parse_inventory({"apps": {"web": {"stack": "gunicorn", "deploy_to": "/srv", "health": {"url": "u"}}},
                             "hosts": {"h": {"hostname": "h"}}}, Path("hosts.toml")).targets["h"]
    assert plain.app.database is None and not handles_database(plain, "h")


def test_confirmation_refuses_without_a_terminal(monkeypatch):
    confirm("Restore?", yes=True)
    monkeypatch.setattr("sys.stdin", open("/dev/null"))
    with pytest.raises(UsageError, match="^Restore\\? Not confirmed: stdin is not a terminal; add --yes to go ahead$"):
        confirm("Restore?", yes=False)


@pytest.mark.parametrize("database, message", [
    ({"engine": "mysql"}, "apps.web.database.engine: unknown value 'mysql'; expected one of: postgresql, sqlite"),
    ({"nmae": "x"}, "apps.web.database.nmae: unknown key; expected one of: engine, name,"),
    ({"port": "5432"}, "apps.web.database.port: expected integer, got string '5432'"),
    ({"engine": "sqlite"}, "apps.web.database.path: missing required key for engine sqlite"),
    ({"path": "app.db"}, "apps.web.database.path: only for engine sqlite"),
    ({"engine": "sqlite", "path": "../app.db"}, "apps.web.database.path: must be a path inside shared/, got '../app.db'"),
    ({"keep_backups": 0}, "apps.web.database.keep_backups: must be at least 1"),
    ({"checks": {"extension": {}}}, "apps.web.database.checks.extension: unknown key; expected one of: extensions,"),
    ({"checks": {"extensions": {"vector": 0.8}}}, "apps.web.database.checks.extensions.vector: expected string, got number"),
    ({"checks": {"columns": {"embedding": "vector"}}}, 'apps.web.database.checks.columns.embedding: name the column as'),
    ({"checks": {"indexes": {"t": "i"}}}, "apps.web.database.checks.indexes.t: expected array, got string 'i'"),
    ({"checks": {"indexes": {"t": [1]}}}, "apps.web.database.checks.indexes.t[0]: expected string, got integer 1"),
])
def test_database_settings_are_validated_with_file_and_key_path(database, message):
    with pytest.raises(InventoryError) as exc:
        inventory(database)
    assert str(exc.value).startswith(f"hosts.toml: {message}"), str(exc.value)


# ---------------------------------------------------------------- backup


def test_postgresql_backup_script():
    assert b.backup_script(PG, "python3", L, "R1") == ENV + (
        "umask 077 && mkdir -p '/srv/my app/backups' || exit 1\n"
        "f='/srv/my app/backups/R1.dump'\n"
        'rm -f "$f" "$f.ok" "$f.partial" "$f.err"\n'
        "t=$(date +%s.%N)\n"
        f'{BIN}/pg_dump --format=custom --file="$f.partial" 2>"$f.err"; rc=$?\n'
        'if [ $rc -ne 0 ] || [ -s "$f.err" ]; then cat "$f.err" >&2; rm -f "$f.partial" "$f.err"; '
        'echo "pg_dump exited $rc (output on stderr counts as a failure): snapshot discarded" >&2; exit 1; fi\n'
        'rm -f "$f.err"\n'
        '[ -s "$f.partial" ] || { rm -f "$f.partial"; echo "the snapshot is empty: discarded" >&2; exit 1; }\n'
        f'{BIN}/pg_restore --list "$f.partial" >/dev/null || '
        '{ rm -f "$f.partial"; echo "the snapshot does not read back: discarded" >&2; exit 1; }\n'
        'mv "$f.partial" "$f" && touch -d "@$t" "$f" && cksum < "$f" > "$f.ok" && echo "SNAPSHOT $(cat "$f.ok") $t"'
    )


def test_sqlite_backup_script_uses_the_online_backup_api():
    copy = f"'{b.SQLITE_COPY}'"
    check = b.verify_cmd(SQ, "/opt/py/bin/python3", '"$f.partial"')
    assert check == f"/opt/py/bin/python3 -c '{b.SQLITE_CHECK}' \"$f.partial\""
    assert b.backup_script(SQ, "/opt/py/bin/python3", L, "R1") == (
        "umask 077 && mkdir -p '/srv/my app/backups' || exit 1\n"
        "f='/srv/my app/backups/R1.sqlite3'\n"
        'rm -f "$f" "$f.ok" "$f.partial" "$f.err"\n'
        "if [ ! -f '/srv/my app/shared/data/app.db' ]; then echo NODB; exit 0; fi\n"
        "t=$(date +%s.%N)\n"
        f"/opt/py/bin/python3 -c {copy} '/srv/my app/shared/data/app.db' \"$f.partial\" || "
        '{ rm -f "$f.partial"; exit 1; }\n'
        '[ -s "$f.partial" ] || { rm -f "$f.partial"; echo "the snapshot is empty: discarded" >&2; exit 1; }\n'
        f'{check} || {{ rm -f "$f.partial"; echo "the snapshot does not read back: discarded" >&2; exit 1; }}\n'
        'mv "$f.partial" "$f" && touch -d "@$t" "$f" && cksum < "$f" > "$f.ok" && echo "SNAPSHOT $(cat "$f.ok") $t"'
    )
    assert "backup(dst)" in b.SQLITE_COPY and "integrity_check" in b.SQLITE_CHECK


def test_backup_output_listing_and_retention():
    snap = b.parse_backup("noise\nSNAPSHOT 3141592653 2048 1795515300.250000000\n", "R1", "/b/R1.dump")
    assert snap == b.Snapshot("R1", "/b/R1.dump", 2048, "3141592653", 1795515300.25)
    assert snap.describe() == "R1.dump, 2.0 KB, verified"
    assert b.parse_backup("", "R1", "/b/R1.dump") is None
    assert b.Snapshot("R1", "/b/R1.dump", 0, "").describe() == "R1.dump (dry-run)"
    assert [b.human_size(n) for n in (512, 2048, 5 * 1024**2, 3 * 1024**3)] == ["512 B", "2.0 KB", "5.0 MB", "3.0 GB"]
    assert b.list_cmd(L) == "ls -1 '/srv/my app/backups' 2>/dev/null || true"
    listing = "R2.dump\nR1.dump\nR1.dump.ok\nR3.dump.partial\nR2.sqlite3\n"
    assert b.parse_list(listing, "postgresql") == {"R1": True, "R2": False}
    assert b.parse_list(listing, "sqlite") == {"R2": False}
    assert b.prune_cmd(L, ["R1"], "postgresql") == (
        "cd '/srv/my app/backups' 2>/dev/null || exit 0; "
        "rm -f -- '/srv/my app/backups/R1.dump' '/srv/my app/backups/R1.dump.ok' *.partial *.err *.toc")
    assert b.prune_cmd(L, [], "sqlite") == "cd '/srv/my app/backups' 2>/dev/null || exit 0; rm -f -- *.partial *.err *.toc"


# ---------------------------------------------------------------- restore


def test_snapshot_check_script_and_refusals():
    head = (
        "f=/b/R1.dump\n"
        'if [ ! -f "$f" ]; then echo MISSING; exit 0; fi\n'
        'if [ ! -f "$f.ok" ]; then echo UNVERIFIED; exit 0; fi\n'
        'want=$(cat "$f.ok"); got=$(cksum < "$f")\n'
        'if [ "$got" != "$want" ]; then echo "CORRUPT $want $got"; exit 0; fi\n'
    )
    ok = 'echo "OK $(stat -c %Y "$f") $(date +%s)"'
    toc = f'toc=$({BIN}/pg_restore --list "$f" 2>/dev/null) || {{ echo UNREADABLE; exit 0; }}\n{ok}'
    assert r.check_script(PG, "python3", "/b/R1.dump") == ENV + head + toc
    assert r.check_script(PG, "python3", "/b/R1.dump", inventory=True) == ENV + head + toc + (
        "\nprintf '%s\\n' \"$toc\"\necho ---\n"
        f"{BIN}/psql -X -A -t -q -v ON_ERROR_STOP=1 -c {shlex.quote(r.RELATIONS_SQL)}"
    )
    assert r.check_script(SQ, "python3", "/b/R1.sqlite3") == head.replace("R1.dump", "R1.sqlite3") + (
        f"python3 -c {shlex.quote(b.SQLITE_CHECK)} \"$f\" 2>/dev/null || {{ echo UNREADABLE; exit 0; }}\n{ok}")
    p = "/b/R1.dump"
    assert r.refusal("OK 1795515300 1795515312", "web1", p, []) is None
    assert r.refusal("MISSING", "web1", p, ["R0", "R2"]) == "web1: snapshot /b/R1.dump does not exist; snapshots here: R0, R2"
    assert r.refusal("UNVERIFIED", "web1", p, []) == (
        "web1: snapshot /b/R1.dump was never verified (no /b/R1.dump.ok: its backup did not finish); refusing to restore it")
    assert r.refusal("CORRUPT 111 2048 222 2048", "web1", p, []) == (
        "web1: snapshot /b/R1.dump is corrupted: its checksum is now 222 (2048 bytes), it was 111 (2048 bytes) when "
        "verified; refusing to restore it")
    assert r.refusal("UNREADABLE", "web1", p, []) == (
        "web1: snapshot /b/R1.dump does not read back (UNREADABLE); refusing to restore it")


def test_postgresql_restore_drops_what_the_snapshot_lacks_then_restores_in_one_transaction():
    toc = (";\n; Archive created at 2026-11-23\n"
           "215; 1259 16385 TABLE public items app\n"
           "214; 1259 16384 SEQUENCE public items_id_seq app\n"
           "3340; 0 16385 TABLE DATA public items app\n"
           "216; 1259 16390 VIEW public cheap app\n"
           "4091; 0 0 COMMENT - EXTENSION cube\n")
    found = ('[["r","public","items"],["S","public","items_id_seq"],["v","public","cheap"],["r","public","audit"],'
             '["S","public","audit_id_seq"],["m","reports","totals"],["i","public","items_pkey"]]')
    extras = r.extra_relations(toc, found)
    assert extras == [("TABLE", "public", "audit"), ("SEQUENCE", "public", "audit_id_seq"),
                      ("MATERIALIZED VIEW", "reports", "totals")]
    assert r.drop_sql(extras[:1] + [("TABLE", "odd", 'we"ird')]) == (
        'DROP TABLE IF EXISTS "public"."audit" CASCADE; DROP TABLE IF EXISTS "odd"."we""ird" CASCADE;')
    assert r.pg_restore_script(PG, "/b/R1.dump", 'DROP TABLE IF EXISTS "public"."audit" CASCADE;') == ENV + (
        "f=/b/R1.dump\n"
        f"{BIN}/pg_restore --list \"$f\" | grep -v -E '^[0-9]+; [0-9]+ [0-9]+ (EXTENSION|COMMENT - EXTENSION) ' "
        "> \"$f.toc\" || exit 1\n"
        "{ printf '%s\\n' 'DROP TABLE IF EXISTS \"public\".\"audit\" CASCADE;'; "
        f"{BIN}/pg_restore --clean --if-exists --no-owner --use-list=\"$f.toc\" --file=- \"$f\" "
        f"|| echo {shlex.quote(r.ABORT_SQL)}; }} | {BIN}/psql -X -q --single-transaction -v ON_ERROR_STOP=1 >/dev/null; "
        "rc=$?\n"
        "rm -f \"$f.toc\"; exit $rc"
    )
    assert "printf" not in r.pg_restore_script(PG, "/b/R1.dump", "")


def test_every_restore_says_since_when_writes_are_lost():
    assert [r.age(s) for s in (0.4, 89, 90, 3000, 7200, 3 * 86400)] == ["0 s", "89 s", "2 min", "50 min", "2.0 h",
                                                                          "3.0 days"]
    assert r.lost_writes(1795515300, 1795515312.5) == "writes made since 2026-11-24 10:15:00 UTC (12 s ago) are lost"
    assert r.Checked("/b/R1.dump", 1795515300, 1795515420).lost_writes().endswith("(2 min ago) are lost")


def test_sqlite_restore_copies_the_snapshot_over_the_live_file():
    assert r.sqlite_restore_cmd(SQ, "python3", "/srv/my app/backups/R1.sqlite3") == (
        "mkdir -p \"$(dirname '/srv/my app/shared/data/app.db')\" && "
        f"python3 -c '{b.SQLITE_COPY}' '/srv/my app/backups/R1.sqlite3' '/srv/my app/shared/data/app.db'")


# ---------------------------------------------------------------- migrate


@pytest.mark.parametrize("command", ["flask db upgrade", "alembic upgrade head", "python manage.py migrate",
                                     "npx prisma migrate deploy"])
def test_migrate_execs_the_command_through_a_launcher_with_the_environment_on_stdin(command):
    assert m.migrate_cmd("/usr/bin/python3", L, "R1", command) == (
        f"/usr/bin/python3 -c {shlex.quote(m.LAUNCHER)} '/srv/my app/releases/R1' {shlex.quote(command)}")
    line = m.launcher_stdin(PG, {"SECRET_KEY": "s3cr3t $(id)", "PGHOST": "from-dotenv"})
    assert line.endswith("\n") and "\n" not in line[:-1]  # one line: the launcher reads exactly that
    assert json.loads(line) == {"env": {"PGHOST": "from-dotenv", "PGPORT": "5433", "PGUSER": "ann",
                                        "PGDATABASE": "app db", "PGPASSWORD": "pw", "SECRET_KEY": "s3cr3t $(id)"}}
    assert "pw" not in m.migrate_cmd("python3", L, "R1", command) and m.pg_env(SQ) == {}
    assert "os.execvp(\"bash\", [\"bash\", \"-c\", sys.argv[2]])" in m.LAUNCHER


def test_a_failed_migration_names_its_first_error_line():
    chained = ("INFO  [alembic.runtime.migration] Running upgrade 0002 -> 0003, audit\n"
               "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
               "psycopg2.errors.UndefinedTable: relation \"nope\" does not exist\n\n"
               "The above exception was the direct cause of the following exception:\n\n"
               "sqlalchemy.exc.ProgrammingError: (psycopg2.errors.UndefinedTable) relation \"nope\" does not exist\n")
    assert output.first_error(chained) == 'psycopg2.errors.UndefinedTable: relation "nope" does not exist'
    assert output.first_error("Traceback (most recent call last):\nModuleNotFoundError: No module named 'flask_migrate'\n") \
        == "ModuleNotFoundError: No module named 'flask_migrate'"
    assert output.first_error("Usage: flask [OPTIONS]\nError: No such command 'db'.\n") == "Error: No such command 'db'."
    assert output.first_error("ERROR [alembic.util.messaging] Can't locate revision identified by 'ff'\n").startswith("ERROR")
    assert output.first_error("all fine\nbash: line 1: alembic: command not found\n") == ""
    assert m.output_tail("\n".join(str(i) for i in range(30)), 3) == "27\n28\n29"


def test_migration_output_is_handed_on_line_by_line_as_it_comes():
    lines: list[str] = []
    stream = output.LineStream(lines.append)
    stream.write("Running upgrade 0001")
    assert lines == []
    stream.write(" -> 0002\nRunning upgrade 0002 -> 0003\npartial")
    assert lines == ["Running upgrade 0001 -> 0002", "Running upgrade 0002 -> 0003"]
    stream.flush()  # invoke flushes after every chunk: a partial line still waits
    assert lines[-1] == "Running upgrade 0002 -> 0003"
    stream.close()
    assert lines[-1] == "partial" and stream.pending == ""


# ---------------------------------------------------------------- schema fingerprint


def test_schema_fingerprint_is_one_read_only_query():
    script = f.fingerprint_script(PG, "python3")
    assert script == ENV + (
        "now=$(date +%s.%N)\n"
        f"fp=$({BIN}/psql -X -A -t -q -v ON_ERROR_STOP=1 -c {shlex.quote(f.PG_SQL)}) || exit 1\n"
        'echo "FINGERPRINT $now $fp"')
    assert f.fingerprint_script(SQ, "python3") == (
        "now=$(date +%s.%N)\n"
        f"fp=$(python3 -c {shlex.quote(f.SQLITE_SCRIPT)} '/srv/my app/shared/data/app.db') || exit 1\n"
        'echo "FINGERPRINT $now $fp"')
    for word in ("pg_attribute", "pg_get_indexdef", "pg_get_constraintdef", "alembic_version"):
        assert word in f.PG_SQL
    found = f.parse_fingerprint("noise\nFINGERPRINT 1795515300.5 0123abcd|0001,0002\n")
    assert found == f.Fingerprint("0123abcd", "0001,0002", 1795515300.5) and found.describe() == "alembic 0001,0002"
    assert f.parse_fingerprint("FINGERPRINT 1.0 ab|-").describe() == "no alembic_version"
    assert f.parse_fingerprint("FINGERPRINT 1.0 ab|").describe() == "alembic_version empty"
    assert f.parse_fingerprint("psql: error: connection refused") is None


# ---------------------------------------------------------------- checks


CHECKS = DbChecks(extensions={"vector": "0.8", "cube": ""},
                  columns={"embeddings.embedding_vector": "vector", "public.items.price": "int4"},
                  indexes={"embeddings": ("embeddings_vector_cosine_idx", "embeddings_vector_l2_idx")}, alembic="")


def test_versions_and_types_compare_like_a_person_would():
    assert c.version_tuple("0.8.1") == (0, 8, 1) and c.version_tuple("15.4 (Debian 15.4-1)") == (15, 4)
    assert c.version_tuple("1.5beta") == (1, 5) and c.version_tuple("0.10") > c.version_tuple("0.9")
    assert c.type_matches("vector", "vector(1536)") and c.type_matches("vector(1536)", "vector(1536)")
    assert not c.type_matches("vector(3)", "vector(1536)") and not c.type_matches("vector", "real[]")
    assert c.type_matches("int4", "integer") and c.type_matches("VARCHAR", "character varying(80)")
    assert c.type_matches("timestamptz", "timestamp with time zone") and c.type_matches("INTEGER", "INTEGER")
    assert c.checked_tables(CHECKS) == ["embeddings", "public.items"]


def test_checks_say_what_was_expected_and_what_was_found():
    facts = c.Facts(
        server="PostgreSQL 15.18", extensions={"vector": "0.7.4", "plpgsql": "1.0"},
        tables={"embeddings": {"id": "integer", "embedding_vector": "real[]"}, "public.items": None},
        indexes={"embeddings": ["embeddings_pkey", "embeddings_vector_cosine_idx"], "public.items": None}, alembic=None)
    assert [(x.name, x.ok, x.detail) for x in c.evaluate(CHECKS, facts)] == [
        ("extension vector", False, "expected vector >= 0.8, found vector 0.7.4"),
        ("extension cube", False, "expected cube, found it not installed (installed: plpgsql 1.0, vector 0.7.4)"),
        ("column embeddings.embedding_vector", False, "expected type vector, found real[]"),
        ("column public.items.price", False, "expected type int4, found no table public.items"),
        ("indexes on embeddings", False, "expected embeddings_vector_cosine_idx, embeddings_vector_l2_idx, missing "
                                         "embeddings_vector_l2_idx (found: embeddings_pkey, embeddings_vector_cosine_idx)"),
    ]
    good = c.Facts(
        server="PostgreSQL 18.3", extensions={"vector": "0.8.2", "cube": "1.5"},
        tables={"embeddings": {"embedding_vector": "vector(1536)"}, "public.items": {"id": "integer", "price": "integer"}},
        indexes={"embeddings": ["embeddings_vector_l2_idx", "embeddings_vector_cosine_idx"], "public.items": []},
        alembic=None)
    assert [(x.ok, x.detail) for x in c.evaluate(CHECKS, good)] == [
        (True, "vector 0.8.2 (>= 0.8)"), (True, "cube 1.5"), (True, "type vector(1536)"), (True, "type integer"),
        (True, "embeddings_vector_cosine_idx, embeddings_vector_l2_idx present")]
    assert c.column_check("items.cost", "integer", {"items": {"id": "integer", "price": "integer"}}).detail == (
        "expected type integer, found no such column (items has: id, price)")


def test_pending_migrations_from_the_release_revision_graph():
    history = c.parse_history('{"known": ["0003", "0001", "0002"], "heads": ["0003"]}\n')
    assert history == (["0001", "0002", "0003"], ["0003"])
    with pytest.raises(ShipfabError, match="^FileNotFoundError: no alembic.ini in the release$"):
        c.parse_history('{"error": "FileNotFoundError: no alembic.ini in the release"}')
    assert c.history_cmd(L, "R1", "migrations/alembic.ini") == (
        f"cd '/srv/my app/releases/R1' && '/srv/my app/releases/R1/.venv/bin/python' -c {shlex.quote(c.HISTORY_SCRIPT)} "
        "migrations/alembic.ini 2>&1")
    assert "ScriptDirectory" in c.HISTORY_SCRIPT and "env.py" not in c.HISTORY_SCRIPT

    def judge(at):
        check = c.alembic_check(at, history, "R1", "web1")
        return check.ok, check.detail

    assert judge(["0003"]) == (True, "at head 0003")
    assert judge(["0002"]) == (False, "pending: the database is at 0002, release R1 head is 0003 (run: fab -H web1 migrate)")
    assert judge(["0009"]) == (False, "the database is at 0009, which release R1 does not have (its head: 0003): "
                                      "the schema is ahead of the code")
    assert judge(None) == (False, "no alembic_version table: never migrated; release R1 head is 0003")
    assert judge([]) == (False, "pending: the database is at (empty), release R1 head is 0003 (run: fab -H web1 migrate)")


def test_sqlite_facts_command():
    assert c.sqlite_facts_cmd("python3", SQ, ["items"]) == (
        f"python3 -c {shlex.quote(c.SQLITE_FACTS)} "
        "'/srv/my app/shared/data/app.db' '[\"items\"]'")


# ---------------------------------------------------------------- rollback


def test_rollback_restores_the_snapshot_taken_while_the_target_served():
    records = [
        {"release": "R1", "previous": "", "backup": "/b/R1.dump"},
        {"release": "R2", "previous": "R1", "backup": "/b/R2.dump", "migrated": True},
        {"release": "R3", "previous": "R2", "backup": "/b/R3.dump", "status": "failed"},
        {"release": "R4", "previous": "R2", "backup": "/b/R4.dump"},
        {"release": "R5", "previous": "R4", "backup": None},
    ]
    assert rollback_snapshot(records, "R2", "R1")["release"] == "R2"  # the left release's own snapshot
    assert rollback_snapshot(records, "R4", "R2")["release"] == "R4"
    assert rollback_snapshot(records, "R5", "R2")["release"] == "R4"  # --to R2: the newest deploy over R2
    assert rollback_snapshot(records, "R5", "R4") is None  # R5 took none
    assert snapshot_id("/srv/app/backups/20261123T101500Z.dump") == "20261123T101500Z"
    assert snapshot_id("backups/20261123T101500Z.sqlite3") == "20261123T101500Z"


def test_the_cli_does_not_import_the_postgresql_driver_until_a_check_runs():
    import subprocess
    import sys

    code = "import sys, fabfile, fabfile.db_tasks, fabfile.steps.db_checks; print('psycopg2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "False"
