"""python -m engine.migrate: bring the schema to the newest version (idempotent, one transaction each)."""

from __future__ import annotations

from . import db

MIGRATIONS = [
    "CREATE TABLE listings (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'raw')",
    "CREATE TABLE runs (id INTEGER PRIMARY KEY, at TEXT DEFAULT CURRENT_TIMESTAMP, processed INTEGER, failed INTEGER)",
]


def main() -> None:
    conn = db.connect()
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    if conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
        conn.execute("INSERT INTO schema_version VALUES (0)")
    conn.commit()
    current = db.version(conn)
    for number, sql in enumerate(MIGRATIONS, start=1):
        if number > current:
            with conn:
                conn.execute(sql)
                conn.execute("UPDATE schema_version SET version = ?", (number,))
            print(f"migration {number} applied")
    print(f"schema at version {db.version(conn)}")


if __name__ == "__main__":
    main()
