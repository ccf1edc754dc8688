"""python -m engine.health: the health report. Its status line says HEALTHY or DEGRADED;
the figures below it are what the alert thresholds read."""

from __future__ import annotations

import sys

from . import db

MAX_FAILURE_RATE = 0.10


def main() -> int:
    conn = db.connect()
    if db.version(conn) < 2:
        print("status: DEGRADED (database not migrated)")
        return 1
    processed, failed = conn.execute("SELECT COALESCE(SUM(processed), 0), COALESCE(SUM(failed), 0) FROM runs").fetchone()
    rate = failed / (processed + failed) if processed + failed else 0.0
    pending = conn.execute("SELECT COUNT(*) FROM listings WHERE status = 'raw'").fetchone()[0]
    print(f"status: {'HEALTHY' if rate <= MAX_FAILURE_RATE else 'DEGRADED'}")
    print(f"failure_rate: {rate:.4f}")
    print(f"processed: {processed}")
    print(f"pending: {pending}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
