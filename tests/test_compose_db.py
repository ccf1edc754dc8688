"""The compose stack's database half against real parts: a real dockerd (compose v2), a real
sshd host, a real PostgreSQL 15, the real `fab` CLI. The example's migrations run inside a
one-off container of the new release (`docker compose run --rm`, psql of the base image);
the snapshot, the fingerprints and the restores run on the host (pg_dump / pg_restore)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psycopg2
import pytest

from .docker_rig import docker_rig, example_repo, make_world  # noqa: F401  (docker_rig: fixture)
from .pg import dump_state

pytestmark = pytest.mark.integration

PASSWORD = "Pw+c0mp0se/x!9"  # URL-special characters: it travels percent-encoded in DATABASE_URL
DB_TOML = """
[apps.web.database]
engine = "postgresql"
migrate = "python3 /app/migrate.py"
keep_backups = 5
"""
PRICE = "-- v2: every item gets a price\nALTER TABLE items ADD COLUMN price integer NOT NULL DEFAULT 50;\n"
# rolls itself back: one file, one transaction, it fails -> nothing of it stays
BROKEN_ALONE = "CREATE TABLE scratch (id integer);\nUPDATE items SET price = 0;\n" \
               "ALTER TABLE items ADD CONSTRAINT priced CHECK (price > 0);\n"
# half-way: 0003 commits (a new table, changed rows), then 0004 fails
AUDIT = "CREATE TABLE audit (id serial PRIMARY KEY, note text);\nINSERT INTO audit (note) VALUES ('v3 was here');\n" \
        "UPDATE items SET name = name || ' (v3)';\n"



@pytest.fixture(scope="module")
def db_repo(tmp_path_factory) -> Path:
    """v1 (0001: items), v2 (+0002: price), selfundo (+0003 failing in its own transaction),
    halfway (+0003 audit commits, 0004 fails)."""
    return example_repo(tmp_path_factory.mktemp("composedbrepo"), {
        "v1": {},
        "v2": {"migrations/0002_price.sql": PRICE},
        "selfundo": {"migrations/0003_broken.sql": BROKEN_ALONE},
        "halfway": {"migrations/0003_broken.sql": "", "migrations/0003_audit.sql": AUDIT,
                    "migrations/0004_broken.sql": BROKEN_ALONE.replace("scratch", "scratch2")},
    })


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_a_schema_change_without_alembic_names_the_digests():
    from fabfile.dbflow import changed_schema
    from fabfile.steps.schema_fingerprint import Fingerprint

    assert changed_schema(Fingerprint("aaaaaaaa11", "-", 0), Fingerprint("bbbbbbbb22", "-", 1)) == \
        "no alembic_version, schema aaaaaaaa -> bbbbbbbb"
    assert changed_schema(Fingerprint("a", "0001", 0), Fingerprint("b", "0002", 1)) == "alembic 0001 -> alembic 0002"


def columns(conn, table: str) -> list[str]:  # noqa: ANN001
    with conn.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
                    (table,))
        return [r[0] for r in cur.fetchall()]


def running_image(rig, project: str) -> str:  # noqa: ANN001
    return rig.docker("ps", "--filter", f"label=com.docker.compose.project={project}", "--format", "{{.Image}}").stdout.strip()


def test_migrate_in_a_one_off_container_snapshot_restore_and_rollback_with_db(tmp_path, db_repo, docker_rig,  # noqa: F811
                                                                               postgres):
    url = postgres.create_database("cdb", "cdb", PASSWORD)
    w = make_world(tmp_path, db_repo, docker_rig, "in-place", extra_toml=DB_TOML)
    try:
        shared = w.deploy_to / "shared"
        shared.mkdir(parents=True)
        (shared / ".env").write_text(f"DATABASE_URL={url}\n")
        (shared / ".env").chmod(0o600)
        db = psycopg2.connect(url)
        db.autocommit = True
        port = w.ports["blue"]
        outputs: list[str] = []

        def fab(*args: str) -> subprocess.CompletedProcess[str]:
            res = w.fab(*args)
            outputs.append(res.stdout + res.stderr)
            return res

        first = ok(fab("deploy", "--ref", "v1"))
        assert first.count("migrate: applying 0001_items.sql") == 1, first
        assert not Path("/app/migrate.py").exists()  # the command's path exists only inside the release's image
        v1 = w.current()
        v1_state = dump_state(db)
        assert columns(db, "items") == ["id", "name"] and len(v1_state["items"]["rows"]) == 3

        second = ok(fab("deploy", "--ref", "v2"))
        v2 = w.current()
        assert w.version(port) == "v2"
        # migrated once, only the new file, after a snapshot named after the release
        assert second.count("migrate: applying") == 1 and "migrate: applying 0002_price.sql" in second, second
        assert second.index("backup_db") < second.index("migrate: snapshot") < second.index("applying 0002")
        assert re.search(r"migrate +ok [\d.]+s \(`python3 /app/migrate.py` ok; no alembic_version, schema "
                         r"[0-9a-f]{8} -> [0-9a-f]{8}\)", second), second
        # the one-off container is gone (`run --rm`), its project runs nothing
        assert docker_rig.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={w.project}-migrate"
                                 ).stdout.strip() == ""
        snapshot = w.deploy_to / "backups" / f"{v2}.dump"
        assert snapshot.stat().st_size > 0 and (w.deploy_to / "backups" / f"{v2}.dump.ok").exists()
        entry = [e for e in w.log() if e["release"] == v2][-1]
        assert entry["backup"] == str(snapshot) and entry["migrated"] is True
        # the snapshot holds the database as v1 left it: no price column yet
        listing = subprocess.run(["pg_restore", "-f", "-", "--schema-only", str(snapshot)], capture_output=True,
                                 text=True, check=True).stdout
        assert "CREATE TABLE public.items" in listing and "price" not in listing
        assert columns(db, "items") == ["id", "name", "price"]
        v2_state = dump_state(db)

        # a migration that fails in its own transaction: the schema is as it was, nothing to restore
        res = fab("deploy", "--ref", "selfundo")
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert "migrate: applying 0003_broken.sql" in out and "priced" in out  # psql's own error, from the container
        assert "the migration rolled itself back (schema unchanged): nothing to restore" in out
        assert dump_state(db) == v2_state
        assert w.current() == v2 and w.version(port) == "v2"

        # 0003 commits, then 0004 fails: the schema changed, the snapshot taken right before it goes back
        res = fab("deploy", "--ref", "halfway")
        out = res.stdout + res.stderr
        assert res.returncode == 1, out
        assert "applying 0003_audit.sql" in out and "applying 0004_broken.sql" in out
        assert "migration `python3 /app/migrate.py` failed (exit 1)" in out  # the app's command, not the wrapper
        assert 'Error: ERROR:  check constraint "priced"' in out
        assert "the migration changed the schema (no alembic_version, schema" in out and "undo_restore_db ok" in out
        assert "dropped public.audit_id_seq, public.audit (not in the snapshot)" in out
        assert dump_state(db) == v2_state  # row for row, no audit table left behind
        assert w.current() == v2 and w.version(port) == "v2"
        assert w.log()[-1]["status"] == "failed"

        # rollback --with-db: v1's images back up (no rebuild), the database as it was before v2's migration
        back = ok(fab("rollback", "--with-db", "--yes"))
        assert "are lost" in back
        assert w.current() == v1 and w.version(port) == "v1"
        assert running_image(docker_rig, w.project) == f"{w.project}-web:{v1}"
        assert "build_images" not in back and "image(s) of" in back
        assert dump_state(db) == v1_state and columns(db, "items") == ["id", "name"]
        assert [e for e in w.log() if e["release"] == v2][-1]["restored_db"] == str(snapshot)

        secrets = [PASSWORD, PASSWORD.replace("+", "%2B").replace("/", "%2F").replace("!", "%21")]
        for text in outputs:
            assert not any(s in text for s in secrets), text
        db.close()
    finally:
        w.stop(docker_rig)
