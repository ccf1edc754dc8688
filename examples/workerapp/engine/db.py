"""The engine's SQLite database: ENGINE_DB (from the app's .env) or data/engine.db."""

from __future__ import annotations

import os
import sqlite3


def path() -> str:
    return os.environ.get("ENGINE_DB", "data/engine.db")


def connect() -> sqlite3.Connection:
    os.makedirs(os.path.dirname(path()) or ".", exist_ok=True)
    return sqlite3.connect(path())


def version(conn: sqlite3.Connection) -> int:
    try:
        return conn.execute("SELECT version FROM schema_version").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
