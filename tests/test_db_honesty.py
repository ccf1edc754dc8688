"""Database honesty, against real PostgreSQL 15, a real sshd host and the sample app's real
alembic migrations in a real venv: the database steps are called as the host flow calls
them (a HostRun per host, the undos it registered run in reverse).

- a failed migration restores the snapshot only when the schema fingerprint changed;
  a migration that rolled itself back restores nothing, and no concurrent write is lost;
- a completed migration is kept (with the exact restore command) when a later step fails;
- a restore that cannot be made is DatabaseNotRestored, naming the command;
- every restore says since when writes are lost;
- the migration gets the .env values byte for byte, and no shell evaluates them;
- its output streams line by line, and a failure names its first error line;
- the alembic check reads plain alembic and Flask-Migrate layouts; a broken check warns;
- restores under load through nginx fail no request.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import psycopg2
import pytest
from dotenv import dotenv_values

from fabfile.context import HostRun, Options
from fabfile.db import DatabaseNotRestored, connection
from fabfile.dbflow import app_env, backup_step, migrate_step
from fabfile.inventory import load_inventory
from fabfile.output import Printer, Redactor
from fabfile.release import Release
from fabfile.remote import Remote
from fabfile.steps.db_checks import release_history, run_checks
from fabfile.steps.migrate import MigrationFailed, migrate
from fabfile.steps.restore_db import restore_db

from .conftest import MIGRATION_0004, SAMPLE, World
from .pg import PostgreSQL, dump_state
from .services import LoadGenerator, Nginx, free_port, wait_for_port

pytestmark = pytest.mark.integration

PASSWORD = "Pw+s3cr3t/x!7q"
ROLLS_ITSELF_BACK = '''"""A migration that fails inside its own transaction: PostgreSQL takes all of it back."""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
    op.add_column("items", sa.Column("colour", sa.Text))
    raise RuntimeError("0003 failed: colours are not ready")
'''
AUDIT_OK = '''"""Commits: a new table."""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade():
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))
'''



@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheelhouse) -> Path:
    """The sample app's requirements in a venv, built once (offline, from the wheelhouse)."""
    path = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run(["python3", "-m", "venv", str(path)], check=True)
    subprocess.run([str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-index", "-f",
                    str(wheelhouse), "-r", str(SAMPLE / "requirements.txt")], check=True)
    return path


class Host:
    """web1: a real sshd host with the sample app's database settings; releases are made by hand."""

    counter = 0

    def __init__(self, world: World, postgres: PostgreSQL, venv: Path, database: str) -> None:
        Host.counter += 1
        name = f"h{Host.counter}"
        self.url = postgres.create_database(name, name, PASSWORD)
        self.name, self.postgres, self.venv, self.world = name, postgres, venv, world
        world.extra_toml = "[apps.sample.database]\n" + database
        self.host = world.add_host("web1", manager="pidfile")
        self.deploy_to = self.host.deploy_to
        self.write_env(f"DATABASE_URL={self.url}\n")
        (self.deploy_to / ".shipfab").mkdir(parents=True)
        self.lines: list[str] = []

    def write_env(self, text: str) -> None:
        shared = self.deploy_to / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        (shared / ".env").write_text(text)
        (shared / ".env").chmod(0o600)

    def release(self, rid: str, extra: dict[str, str] | None = None, flask_migrate: bool = False) -> Path:
        """releases/<rid>: the sample app (0001, 0002) plus `extra` migrations, with the venv."""
        rel = self.deploy_to / "releases" / rid
        shutil.copytree(SAMPLE, rel, ignore=shutil.ignore_patterns("__pycache__", "data"))
        for name, text in (extra or {}).items():
            (rel / "migrations" / "versions" / name).write_text(text)
        if flask_migrate:  # Flask-Migrate's layout: migrations/alembic.ini, no script_location
            ini = (rel / "alembic.ini").read_text()
            (rel / "migrations" / "alembic.ini").write_text(re.sub(r"(?m)^script_location.*\n", "", ini))
            (rel / "alembic.ini").unlink()
        (rel / ".venv").symlink_to(self.venv)
        return rel

    def run(self, rid: str, printer: Printer | None = None) -> HostRun:
        target = load_inventory(self.world.inventory).targets["web1"]
        printer = printer or Printer(Redactor(), verbosity=1)
        remote = Remote(target, printer)
        remote.busy = f"{self.deploy_to}/.shipfab/busy"  # as once the deploy lock is held
        return HostRun(target, remote, printer, Options(), release=Release(id=rid, ref=rid), primary="web1")

    def db(self):
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        return conn

    def versions(self) -> list[str]:
        with self.db() as conn, conn.cursor() as cur:
            cur.execute("SELECT version_num FROM alembic_version")
            return [r[0] for r in cur.fetchall()]


@pytest.fixture
def web1(tmp_path, wheelhouse, postgres, venv):
    world = World(tmp_path, wheelhouse, SAMPLE)
    host = Host(world, postgres, venv, 'migrate = "alembic upgrade head"\n')
    yield host
    world.stop()


def deploy_db(run: HostRun) -> str | None:
    """backup_db then migrate, as the stack runs them (timed: `done` records what completed)."""
    run.timed("backup_db", lambda: backup_step(run))
    return run.timed("migrate", lambda: migrate_step(run))


def undo(run: HostRun) -> list[str | None]:
    return [u.run() for u in reversed(run.undos)]


def at_v2(web1: Host) -> None:
    web1.release("R1")
    assert "no alembic_version -> alembic 0002" in (deploy_db(web1.run("R1")) or "")


class Writer(threading.Thread):
    """Inserts rows one by one (autocommit) until stopped; `committed` is what the database confirmed."""

    def __init__(self, web1: Host) -> None:
        super().__init__(daemon=True)
        self.conn, self.committed, self.stop = web1.db(), [], threading.Event()

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute("INSERT INTO items (name, price) VALUES (%s, 1) RETURNING id", (f"w{len(self.committed)}",))
                self.committed.append(cur.fetchone()[0])

    def finish(self) -> list[int]:
        self.stop.set()
        self.join(10)
        self.conn.close()
        return self.committed


def test_a_migration_that_rolled_itself_back_restores_nothing_and_loses_no_write(web1, capsys):
    at_v2(web1)
    web1.release("R2", {"0003_colour.py": ROLLS_ITSELF_BACK})
    run = web1.run("R2")
    run.timed("backup_db", lambda: backup_step(run))
    writer = Writer(web1)
    writer.start()
    with pytest.raises(MigrationFailed) as failed:
        run.timed("migrate", lambda: migrate_step(run))
    details = undo(run)
    written = writer.finish()

    assert "in release R2: RuntimeError: 0003 failed: colours are not ready\n" in str(failed.value)
    assert details == ["the migration rolled itself back (schema unchanged): nothing to restore"]
    out = capsys.readouterr().out
    assert re.search(r"\[web1\] migrate: snapshot \d+\.\d s before the migration", out), out
    assert "[web1] INFO  [alembic.runtime.migration] Running upgrade 0002 -> 0003" in out  # streamed, host-prefixed
    assert "are lost" not in out and not run.release.migrated and web1.versions() == ["0002"]
    with web1.db() as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM items WHERE name LIKE 'w%'")
        assert sorted(r[0] for r in cur.fetchall()) == sorted(written) and written  # every write after the snapshot


def test_a_half_applied_migration_is_restored_and_the_lost_writes_are_named(web1, capsys):
    at_v2(web1)
    state = dump_state(web1.db())
    web1.release("R3", {"0003_audit.py": AUDIT_OK, "0004_broken.py": MIGRATION_0004})
    run = web1.run("R3")
    with pytest.raises(MigrationFailed, match="RuntimeError: 0004 failed half-way"):
        deploy_db(run)
    details = undo(run)

    assert details[0].startswith("the migration changed the schema (alembic 0002 -> alembic 0003): restored ")
    assert re.search(r"; dropped (public\.audit_id_seq, )?public\.audit(, public\.audit_id_seq)? \(not in the snapshot\)$",
                     details[0]), details[0]
    assert dump_state(web1.db()) == state
    out = capsys.readouterr().out
    assert re.search(r"\[web1\] restoring \S+/backups/R3\.dump: writes made since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
                     r"\(\d+ s ago\) are lost", out), out
    assert undo(run) == ["the migration rolled itself back (schema unchanged): nothing to restore"]  # idempotent


def test_a_completed_migration_is_kept_with_the_restore_command_when_a_later_step_fails(web1):
    at_v2(web1)
    web1.release("R4", {"0003_audit.py": AUDIT_OK})
    run = web1.run("R4")
    assert "alembic 0002 -> alembic 0003" in (deploy_db(run) or "")
    assert run.release.migrated and run.release.backup.endswith("/backups/R4.dump") and run.release.backup_at > 0
    # ... then, say, the health check fails: the flow runs the undos
    assert undo(run) == ["kept the migrated schema (see the note)"]
    assert run.notes == ["the database keeps the migrations of R4 (the code went back, the schema did not); "
                         "to take it back too: fab -H web1 restore-db --release R4 --yes"]
    assert web1.versions() == ["0003"]


def test_a_restore_that_cannot_be_made_raises_with_the_exact_command(web1):
    at_v2(web1)
    web1.release("R5", {"0003_audit.py": AUDIT_OK, "0004_broken.py": MIGRATION_0004})
    run = web1.run("R5")
    run.timed("backup_db", lambda: backup_step(run))
    snapshot = Path(run.release.backup)
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    with pytest.raises(MigrationFailed):
        run.timed("migrate", lambda: migrate_step(run))
    with pytest.raises(DatabaseNotRestored) as exc:
        undo(run)
    assert exc.value.exit_code == 2
    assert "the migration changed the schema (alembic 0002 -> alembic 0003) and restoring" in str(exc.value)
    assert "is corrupted" in str(exc.value) and str(exc.value).endswith("fab -H web1 restore-db --release R5 --yes")


HOSTILE_ENV = """\
DATABASE_URL={url}
SUBST="$(touch {marker}-subst)"
BACKTICK=`touch {marker}-backtick`
DOLLAR=$HOME/x and ${{HOME}}
SINGLE='it is $(touch {marker}-single) "quoted"'
DOUBLE="say \\"hi\\" # not a comment; $PATH"
HASH=abc # a comment
ESCAPES="tab\\there\\nnew line"
MULTI="first line
second line; `touch {marker}-multi`"
UNICODE=héllo ✓ 日本語
"""


def test_the_migration_gets_every_env_value_byte_for_byte_and_no_shell_evaluates_one(web1, tmp_path):
    marker = tmp_path / "evaluated"
    text = HOSTILE_ENV.format(url=web1.url, marker=marker)
    web1.write_env(text)
    web1.release("R6")
    run = web1.run("R6")
    out = tmp_path / "seen.json"
    keys = ["SUBST", "BACKTICK", "DOLLAR", "SINGLE", "DOUBLE", "HASH", "ESCAPES", "MULTI", "UNICODE", "DATABASE_URL"]
    command = (f"python -c 'import json, os, sys; json.dump({{k: os.environ.get(k) for k in sys.argv[2:]}}, "
               f"open(sys.argv[1], \"w\"))' {out} {' '.join(keys)}")
    conn = connection(run.remote, run.target)
    migrate(run.remote, conn, run.layout, "R6", command, run.app.python, app_env(run))

    seen = json.loads(out.read_text())
    expected = dotenv_values(stream=io.StringIO(text), interpolate=False)
    assert seen == {k: expected[k] for k in keys}
    assert seen["SUBST"] == f"$(touch {marker}-subst)" and seen["BACKTICK"] == f"`touch {marker}-backtick`"
    assert seen["DOLLAR"] == "$HOME/x and ${HOME}" and seen["HASH"] == "abc"
    assert seen["DOUBLE"] == 'say "hi" # not a comment; $PATH' and seen["ESCAPES"] == "tab\there\nnew line"
    assert seen["MULTI"] == f"first line\nsecond line; `touch {marker}-multi`" and seen["UNICODE"] == "héllo ✓ 日本語"
    assert not list(tmp_path.glob("evaluated*"))  # nothing ran


class FlagPrinter(Printer):
    """A printer that touches `flag` once it has printed a line containing `when`."""

    def __init__(self, flag: Path, when: str) -> None:
        super().__init__(Redactor(), verbosity=1)
        self.flag, self.when = flag, when

    def line(self, text: str, host: str = "", level: int = 1, err: bool = False) -> None:
        super().line(text, host, level, err)
        if self.when in text:
            self.flag.touch()


def test_migration_output_streams_while_it_runs_and_a_failure_names_the_real_cause(web1, tmp_path, capsys):
    web1.release("R7")
    flag = tmp_path / "seen-first-line"
    run = web1.run("R7", FlagPrinter(flag, "first step done"))
    conn = connection(run.remote, run.target)
    # It only finishes once the controller has printed its first line: the output must stream.
    waits = (f"echo 'first step done'; i=0; while [ ! -f {flag} ]; do i=$((i+1)); "
             "if [ $i -gt 600 ]; then echo 'TimeoutError: the first line never arrived'; exit 1; fi; sleep 0.1; done; "
             "echo 'second step done'")
    assert migrate(run.remote, conn, run.layout, "R7", waits, run.app.python, {}) == f"`{waits}` ok"
    out = capsys.readouterr().out
    assert "[web1] first step done\n[web1] second step done\n" in out

    fails = "echo 'INFO starting'; python -c 'import flask_migrate_missing'; echo 'ERROR later noise'; exit 3"
    with pytest.raises(MigrationFailed) as exc:
        migrate(run.remote, conn, run.layout, "R7", fails, run.app.python, {})
    message = str(exc.value)
    assert message.startswith(f"web1: migration `{fails}` failed (exit 3) in release R7: "
                              "ModuleNotFoundError: No module named 'flask_migrate_missing'\nits last lines:\n")


def test_the_alembic_check_reads_plain_and_flask_migrate_layouts_and_only_warns_when_it_cannot(tmp_path, wheelhouse,
                                                                                                 postgres, venv):
    world = World(tmp_path, wheelhouse, SAMPLE)
    try:
        web1 = Host(world, postgres, venv, 'migrate = "flask db upgrade"\n[apps.sample.database.checks]\n'
                                           'alembic = "migrations/alembic.ini"\n')
        web1.release("R1", flask_migrate=True)
        web1.release("R2")
        run = web1.run("R1")
        assert release_history(run.remote, run.layout, "R1", "migrations/alembic.ini") == (["0001", "0002"], ["0002"])
        assert release_history(run.remote, run.layout, "R2", "alembic.ini") == (["0001", "0002"], ["0002"])
        conn = connection(run.remote, run.target)
        migrate(run.remote, conn, run.layout, "R2", "alembic upgrade head", run.app.python, app_env(run))
        (web1.deploy_to / "current").symlink_to(web1.deploy_to / "releases" / "R1")

        checks = {c.name: c for c in run_checks(run.remote, run.target)}
        assert checks["migrations"].ok and not checks["migrations"].warning
        assert checks["migrations"].detail == "at head 0002"

        (web1.deploy_to / "releases" / "R1" / "migrations" / "alembic.ini").unlink()
        broken = {c.name: c for c in run_checks(run.remote, run.target)}["migrations"]
        assert broken.warning and broken.ok
        assert broken.detail == ("not checked: cannot read the migrations of release R1 with migrations/alembic.ini: "
                                 "FileNotFoundError: no migrations/alembic.ini in the release")
    finally:
        world.stop()


def test_restores_under_load_through_nginx_fail_no_request(web1, tmp_path):
    web1.release("R1")
    v1 = web1.run("R1")
    (web1.deploy_to / "releases" / "R1" / "migrations" / "versions" / "0002_price.py").unlink()  # v1: items only
    deploy_db(v1)
    web1.release("R2")
    v2 = web1.run("R2")
    deploy_db(v2)  # snapshot R2 = the v1 schema; the database is at v2 (items.price)
    v2_snapshot = web1.run("R3")
    v2_snapshot.timed("backup_db", lambda: backup_step(v2_snapshot))  # snapshot R3 = the v2 schema
    assert web1.versions() == ["0002"]

    rel = web1.deploy_to / "releases" / "R1"
    (rel / ".env").write_text(f"DATABASE_URL={web1.url}\n")
    port = free_port()
    app = subprocess.Popen([str(web1.venv / "bin" / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "--chdir", str(rel),
                            "app:app"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    nginx = None
    try:
        wait_for_port(port, timeout=30, proc=app)
        nginx = Nginx.start(tmp_path / "nginx", f"127.0.0.1:{port}")
        run = web1.run("R9")
        conn = connection(run.remote, run.target)
        with LoadGenerator(f"{nginx.url}/items", rate=50) as load:
            for snapshot in ("R2", "R3", "R2", "R3"):
                restore_db(run.remote, conn, run.app.python, run.layout, snapshot)
        result = load.result()
        assert result.total > 0 and result.failed == 0, result.failures
        assert any('"price"' in body for body in result.bodies) and any(
            body and '"price"' not in body for body in result.bodies)  # both schemas served
    finally:
        if nginx is not None:
            nginx.stop()
        os.killpg(app.pid, 15)
        app.wait(20)
