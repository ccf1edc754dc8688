"""python -m engine.run [--limit N] [--dry-run]: process up to N raw listings (cron runs this)."""

from __future__ import annotations

import argparse
import sys

from . import db
from .extract import extract


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="engine.run")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    conn = db.connect()
    if db.version(conn) < 2:
        print(f"error: the database is not migrated (schema version {db.version(conn)}); run python -m engine.migrate")
        return 1
    rows = conn.execute("SELECT id, name FROM listings WHERE status = 'raw' LIMIT ?", (args.limit,)).fetchall()
    done = [(extract(name), rid) for rid, name in rows]
    if args.dry_run:
        print(f"dry run: would process {len(done)} listing(s) (limit {args.limit}); nothing written")
        return 0
    with conn:
        conn.executemany("UPDATE listings SET name = ?, status = 'done' WHERE id = ?", done)
        conn.execute("INSERT INTO runs (processed, failed) VALUES (?, 0)", (len(done),))
    print(f"processed {len(done)} listing(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
