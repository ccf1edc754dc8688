"""Benchmark: shipfab's backup (pg_dump + verify + seal) and restore (check + drop extras +
pg_restore in one transaction) of a ~200 MB PostgreSQL database, against the floor: plain
`pg_dump -Fc` and `pg_restore --clean --if-exists` on the same machine.

Starts Debian's PostgreSQL 15 and one loopback sshd host under temp dirs; shipfab goes
through ssh like in production, the floor runs the tools directly. Medians of N runs,
alternating; prints the ratios (target <= 1.15x) and the dump size.
Run from the repo root: `python bench/db_backup.py --runs 3 [--scale 10]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fabfile.db import connection  # noqa: E402
from fabfile.inventory import parse_inventory  # noqa: E402
from fabfile.layout import Layout  # noqa: E402
from fabfile.output import Printer, table  # noqa: E402
from fabfile.remote import Remote  # noqa: E402
from fabfile.steps.backup_db import backup_db, human_size  # noqa: E402
from fabfile.steps.restore_db import restore_db  # noqa: E402
from tests.pg import DEBIAN_15, PostgreSQL  # noqa: E402
from tests.services import Sshd, make_ssh_keys  # noqa: E402

TARGET_RATIO = 1.15
PASSWORD = "bench-Pw+1"
# Besides pgbench's (very compressible) tables: rows of hex text, which compress like real data.
DOCS_SQL = ("CREATE TABLE docs AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) AS body, "
            "now() - g * interval '1 second' AS created FROM generate_series(1, {rows}) g; "
            "ALTER TABLE docs ADD PRIMARY KEY (id); CREATE INDEX docs_created ON docs (created)")


def make_database(pg: PostgreSQL, scale: int, doc_rows: int) -> str:
    url = pg.create_database("bench", "bench", PASSWORD)
    env = {**os.environ, "PGPASSWORD": PASSWORD}
    subprocess.run([str(DEBIAN_15 / "pgbench"), "-i", "-q", "-s", str(scale), "-h", pg.host, "-p", str(pg.port),
                    "-U", "bench", "bench"], check=True, capture_output=True, env=env)
    pg.sql(f'SET ROLE "bench"; {DOCS_SQL.format(rows=doc_rows)}', dbname="bench")
    pg.sql("VACUUM ANALYZE", dbname="bench")
    return url


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=int, default=8, help="pgbench scale (about 15 MB each)")
    parser.add_argument("--doc-rows", type=int, default=500_000, help="rows of hex text (about 130 bytes each)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="shipfab-bench-db-"))
    pg = PostgreSQL.start()
    sshd = Sshd.start(work / "sshd", make_ssh_keys(work / "keys"))
    try:
        url = make_database(pg, args.scale, args.doc_rows)
        db_size = int(pg.sql("SELECT pg_database_size('bench')")[0][0])
        deploy_to = work / "srv"
        (deploy_to / "shared").mkdir(parents=True)
        (deploy_to / "shared" / ".env").write_text(f"DATABASE_URL={url}\n")
        inventory = {
            "defaults": {"key_filename": str(sshd.key_filename), "known_hosts": str(sshd.known_hosts)},
            "apps": {"bench": {"stack": "gunicorn", "deploy_to": str(deploy_to), "health": {"url": "http://x/"},
                               "database": {"keep_backups": 1}}},
            "hosts": {"db1": {"hostname": sshd.hostname, "port": sshd.port, "user": sshd.user}},
        }
        target = parse_inventory(inventory, work / "hosts.toml").targets["db1"]
        remote = Remote(target, Printer(verbosity=0))
        layout = Layout(str(deploy_to))
        conn = connection(remote, target)
        plain_file = work / "plain.dump"
        env = {**os.environ, "PGPASSWORD": PASSWORD, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": "bench",
               "PGDATABASE": "bench"}

        def run(*argv: str) -> None:
            subprocess.run(argv, check=True, env=env, stdin=subprocess.DEVNULL)

        times: dict[str, list[float]] = {k: [] for k in ("plain_dump", "ship_backup", "plain_restore", "plain_restore_1tx",
                                                          "ship_restore")}
        sizes = {}
        for i in range(args.runs):
            snapshot = f"2026010{i + 1}T000000Z"
            times["plain_dump"].append(timed(lambda: run("pg_dump", "-Fc", "-f", str(plain_file))))
            times["ship_backup"].append(timed(lambda s=snapshot: backup_db(remote, conn, "python3", layout, s)))
            times["plain_restore"].append(timed(lambda: run("pg_restore", "--clean", "--if-exists", "-d", "bench",
                                                            str(plain_file))))
            times["plain_restore_1tx"].append(timed(lambda: run("pg_restore", "--clean", "--if-exists", "--single-transaction",
                                                                "-d", "bench", str(plain_file))))
            times["ship_restore"].append(timed(lambda s=snapshot: restore_db(remote, conn, "python3", layout, s)))
            sizes = {"plain": plain_file.stat().st_size, "shipfab": (deploy_to / "backups" / f"{snapshot}.dump").stat().st_size}
        remote.close()
    finally:
        sshd.stop()
        pg.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    med = {k: statistics.median(v) for k, v in times.items()}
    # Two floors: plain pg_restore as most people run it, and the like-for-like one shipfab
    # does (all or nothing, --single-transaction). The target is judged like for like.
    total_plain = med["plain_dump"] + med["plain_restore"]
    total_1tx, total_ship = med["plain_dump"] + med["plain_restore_1tx"], med["ship_backup"] + med["ship_restore"]
    rows = [
        ["backup (pg_dump -Fc | + verify, checksum, .ok)", f"{med['plain_dump']:.2f}", f"{med['ship_backup']:.2f}",
         f"{med['ship_backup'] / med['plain_dump']:.2f}x"],
        ["restore (pg_restore --clean --if-exists | shipfab)", f"{med['plain_restore']:.2f}",
         f"{med['ship_restore']:.2f}", f"{med['ship_restore'] / med['plain_restore']:.2f}x"],
        ["restore, both --single-transaction", f"{med['plain_restore_1tx']:.2f}",
         f"{med['ship_restore']:.2f}", f"{med['ship_restore'] / med['plain_restore_1tx']:.2f}x"],
        ["backup + verify + restore (plain restore)", f"{total_plain:.2f}", f"{total_ship:.2f}",
         f"{total_ship / total_plain:.2f}x"],
        ["backup + verify + restore (like for like)", f"{total_1tx:.2f}", f"{total_ship:.2f}",
         f"{total_ship / total_1tx:.2f}x"],
    ]
    print(f"database {human_size(db_size)} (pgbench -s {args.scale} + {args.doc_rows} rows of text); "
          f"dump {human_size(sizes['shipfab'])} (plain pg_dump: {human_size(sizes['plain'])}); medians of {args.runs}")
    print(table(["seconds", "plain", "shipfab", "ratio"], rows))
    ratio = total_ship / total_1tx
    print(f"target (like for like) <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'} ({ratio:.2f}x)")
    print(json.dumps({"db_bytes": db_size, "dump_bytes": sizes["shipfab"], "medians": med, "ratio": ratio}))
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
