"""The fault matrix for the database steps (issue 7, items 3 and 8): the real `fab` CLI
deploying over real sshd to a host whose app uses a real PostgreSQL 15 and the sample
app's real alembic migrations, frozen inside the busy flock of `backup_db` or `migrate`
(tests/faults.py), then hit: the ssh link cut (the remote command goes on as an orphan
and finishes, or fails, on its own) or the CLI sent SIGTERM.

After each: what serves matches the exit code, the lock is free, the release log is true,
the database is what the outcome says (schema fingerprint, alembic version, rows), no
output holds a traceback, and a re-run succeeds."""

from __future__ import annotations

import itertools
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from fabfile.db import merge_settings, parse_database_url, secret_stdin
from fabfile.inventory import load_inventory
from fabfile.steps.migrate import launcher_stdin
from fabfile.steps.schema_fingerprint import PG_SQL

from .conftest import Host, World, migrations_repo
from .faults import FabProcess, Pauser, Truth, assert_outcome, cut_link, read_truth, wait_orphans, wait_stdin
from .pg import PostgreSQL, dump_state
from .test_faults import Rig

pytestmark = pytest.mark.integration

PASSWORD = "Pw+s3cr3t/x!7q"
PG_TOML = """
[apps.sample.database]
engine = "postgresql"
migrate = "alembic upgrade head"
keep_backups = 2
"""
# The tag `fails`: v2 plus a revision that creates a table, then raises inside its own
# transaction (env.py: one transaction per migration), so PostgreSQL takes it all back.
ROLLS_ITSELF_BACK = '''"""fails: a migration that raises after creating a table."""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
    raise RuntimeError("0003 failed: audit is not ready")
'''
BACKUP = r"pg_dump --format=custom"  # the backup script, inside its busy flock
MIGRATE = r"alembic upgrade head"  # the migrate launcher, inside its busy flock
DATABASES = itertools.count(1)  # one database (and role) per test



@pytest.fixture(scope="module")
def db_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample app with its migrations: v1 (0001), v2 (+0002), fails (+0003 that raises)."""
    return migrations_repo(tmp_path_factory.mktemp("faultdbrepo"), {"fails": {"0003_audit.py": ROLLS_ITSELF_BACK}})

class DbRig(Rig):
    """A Rig whose app has a PostgreSQL database of its own."""

    url: str = ""

    def connect(self) -> Any:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        return conn

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, params or None)
            return cur.fetchall() if cur.description else []

    def stdin_size(self, pattern: str) -> int:
        """How many bytes fab sends on the stdin of the backup (the password) or of the
        migration launcher (libpq settings and the .env, one JSON line)."""
        target = load_inventory(self.world.inventory).targets[self.host.name]
        assert target.app.database is not None
        conn = merge_settings(target.app.database, parse_database_url(self.url), str(self.host.deploy_to / "shared"))
        text = launcher_stdin(conn, {"DATABASE_URL": self.url}) if pattern == MIGRATE else secret_stdin(conn) or ""
        return len(text.encode())

    def fingerprint(self) -> str:
        """The schema fingerprint fab compares (the same query, read here directly)."""
        return str(self.query(PG_SQL)[0][0])

    def state(self) -> dict[str, Any]:
        """Schema fingerprint, then every table row for row."""
        conn = self.connect()
        try:
            return {"fingerprint": self.fingerprint(), "tables": dump_state(conn)}
        finally:
            conn.close()


@pytest.fixture
def rig(tmp_path: Path, wheelhouse: Path, db_repo: Path, postgres: PostgreSQL) -> Iterator[DbRig]:
    world = World(tmp_path, wheelhouse, db_repo)
    world.extra_toml = PG_TOML
    pauser = Pauser(tmp_path / "faults")
    try:
        host = world.add_host("web1", manager="supervisor")
        pauser.install(host.sshd)
        name = f"fdb{next(DATABASES)}"
        rig = DbRig(world, host, pauser)
        rig.url = postgres.create_database(name, name, PASSWORD)
        shared = host.deploy_to / "shared"
        shared.mkdir(parents=True)
        (shared / ".env").write_text(f"DATABASE_URL={rig.url}\n")
        (shared / ".env").chmod(0o600)
        yield rig
    finally:
        pauser.release_all()
        world.stop()


def cut_at(rig: DbRig, pattern: str, ref: str, meanwhile: Any = None, delivered: bool = True
           ) -> subprocess.CompletedProcess[str]:
    """Deploy `ref`, freeze it inside the busy flock of the command matching `pattern`, cut
    the link (`delivered`: once all its stdin has arrived, else at once: the link drops while
    fab still sends it), run `meanwhile` (the orphan has not started), let the orphan go on."""
    rig.pauser.arm("flock", pattern)
    fab = rig.start("deploy", "--ref", ref)
    paused = rig.pauser.wait_paused(fab)
    if delivered:
        wait_stdin(paused, rig.stdin_size(pattern))
    assert cut_link(rig.host.sshd) >= 1
    if meanwhile is not None:
        meanwhile()
    rig.pauser.release(paused)
    return fab.wait()


def failed_release(rig: DbRig, before: Truth) -> tuple[str, dict[str, Any]]:
    """The one release the faulted deploy logged (it no longer exists), and its log record."""
    log = read_truth(rig.host).log
    made = [r for r in log if r and r not in before.log]
    assert len(made) == 1, log
    return made[0], log[made[0]]


def assert_snapshots_true(host: Host) -> None:
    """A snapshot counts only with its `.ok`, and every `.ok` matches its file (`cksum`); no
    leftover of an interrupted backup."""
    backups = host.deploy_to / "backups"
    for ok in backups.glob("*.ok"):
        dump = backups / ok.name.removesuffix(".ok")
        assert dump.exists(), f"{ok} has no snapshot"
        crc = subprocess.run(["cksum"], stdin=dump.open("rb"), capture_output=True, check=True).stdout.decode()
        assert crc.split() == ok.read_text().split(), (dump, crc, ok.read_text())
    assert not list(backups.glob("*.partial")) and not list(backups.glob("*.err")), list(backups.iterdir())


def snapshot_column(rig: DbRig, release: str) -> str | None:
    """What `fab releases` shows in the snapshot column for `release` (None: not listed)."""
    out = rig.ok("releases")
    row = next((line for line in out.splitlines() if release in line), None)
    return row.split()[-1] if row else None


# ------------------------------------------------------------------ the cases


@pytest.mark.parametrize("when", ["once-stdin-arrived", "at-once"])
def test_link_cut_during_backup_counts_no_snapshot_and_undoes(rig: DbRig, when: str) -> None:
    """`at-once`: the link may drop while fab still sends the password; `once-stdin-arrived`:
    the orphaned backup runs to its end (a verified snapshot no log record names)."""
    before = rig.baseline("v1")
    db_before = rig.state()

    res = cut_at(rig, BACKUP, "v2", delivered=when != "at-once")
    assert res.returncode == 1, res.stdout
    assert_outcome(rig.host, res, before, old="v1", new="v2")
    release, record = failed_release(rig, before)
    assert record["status"] == "failed" and record["backup"] is None and record["migrated"] is False, record
    assert "backup_db" in record["reason"] or "ssh" in record["reason"], record["reason"]
    wait_orphans(rig.host)
    assert_snapshots_true(rig.host)
    assert snapshot_column(rig, release) in (None, "-")
    assert rig.state() == db_before  # never migrated

    rig.rerun("v2", "v2")
    assert rig.query("SELECT version_num FROM alembic_version") == [("0002",)]
    assert_snapshots_true(rig.host)
    current = rig.host.current()
    assert snapshot_column(rig, current) == f"{current}.dump"


def test_link_cut_during_migrate_that_completes_as_an_orphan_restores_the_snapshot(rig: DbRig) -> None:
    before = rig.baseline("v1")
    db_before = rig.state()

    res = cut_at(rig, MIGRATE, "v2")
    out = res.stdout
    assert res.returncode in (1, 2), out
    assert_outcome(rig.host, res, before, old="v1", new="v2")
    assert "nothing went live" not in out or "restored" in out, out
    release, record = failed_release(rig, before)
    if res.returncode == 1:  # the orphan's migration was found and taken back: the database as v1 left it
        assert "the migration changed the schema (alembic 0001 -> alembic 0002)" in out, out
        assert "are lost" in out and record["backup"].endswith(f"/backups/{release}.dump"), (out, record)
        assert rig.state() == db_before
        assert record["migrated"] is False, record
    else:  # it could not be: the exact command, and the log says the schema moved
        assert f"fab -H web1 restore-db --release {release} --yes" in out, out
        assert record["migrated"] is True, record
    assert record["status"] == "failed" and record["reason"], record

    rig.rerun("v2", "v2")
    assert rig.query("SELECT version_num FROM alembic_version") == [("0002",)]


def test_link_cut_during_a_migration_that_fails_on_its_own_restores_nothing(rig: DbRig) -> None:
    before = rig.baseline("v2")
    schema = rig.fingerprint()
    written: list[int] = []

    def concurrent_write() -> None:  # after the snapshot, before the migration fails
        written.append(rig.query("INSERT INTO items (name, price) VALUES ('late', 1) RETURNING id")[0][0])

    res = cut_at(rig, MIGRATE, "fails", meanwhile=concurrent_write)
    out = res.stdout
    assert res.returncode == 1, out
    assert_outcome(rig.host, res, before, old="v2", new="fails")
    assert "the migration rolled itself back (schema unchanged): nothing to restore" in out, out
    assert "restoring" not in out and "are lost" not in out, out
    _, record = failed_release(rig, before)
    assert record["status"] == "failed" and record["migrated"] is False and record["backup"], record
    assert rig.fingerprint() == schema
    assert rig.query("SELECT version_num FROM alembic_version") == [("0002",)]
    assert rig.query("SELECT id FROM items WHERE name = 'late'") == [(written[0],)]  # the write survived

    rig.rerun("v2", "v2")
    assert rig.query("SELECT id FROM items WHERE name = 'late'") == [(written[0],)]


def test_sigterm_while_migrate_runs_undoes_and_leaves_the_database_as_what_serves(rig: DbRig) -> None:
    before = rig.baseline("v1")
    db_before = rig.state()

    rig.pauser.arm("flock", MIGRATE)
    fab = FabProcess(rig.world, "-H", rig.host.name, "deploy", "--ref", "v2")
    paused = rig.pauser.wait_paused(fab)
    fab.signal(signal.SIGTERM)
    rig.pauser.release(paused)
    res = fab.wait()
    out = res.stdout

    assert res.returncode == 1, out
    assert_outcome(rig.host, res, before, old="v1", new="v2")
    _, record = failed_release(rig, before)
    assert record["status"] == "failed" and "SIGTERM" in record["reason"], record
    wait_orphans(rig.host)
    if record["migrated"]:  # kept, with the note naming the restore command: the log says so
        assert "restore-db --release" in record["reason"], record
    else:  # v1 serves on the database as v1 left it
        assert rig.state() == db_before, out
    rig.rerun("v2", "v2")
    assert rig.query("SELECT version_num FROM alembic_version") == [("0002",)]
