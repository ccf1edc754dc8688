"""Sample Flask app deployed by shipfab's sandbox, tests and benchmarks."""

import os
from pathlib import Path

from dotenv import load_dotenv
from flask import Flask, jsonify

HERE = Path(__file__).resolve().parent
load_dotenv(HERE / ".env")

app = Flask(__name__)


def _read(name: str, default: str = "") -> str:
    path = HERE / name
    return path.read_text().strip() if path.exists() else default


VERSION = _read("VERSION", "dev")
REVISION = _read("REVISION", "unknown")
# A release can be made broken on purpose (tests): HEALTHY=0 in its VERSION-side file.
HEALTHY = _read("HEALTHY", "1") == "1"


@app.get("/")
def index():
    return f"shipfab sample app {VERSION} ({REVISION[:12]})\n"


@app.get("/items")
def items():
    """The rows of the items table (migrations/ creates and changes it)."""
    from db import engine  # only this route needs the database
    from sqlalchemy import text

    with engine.connect() as conn:
        return jsonify([dict(row._mapping) for row in conn.execute(text("SELECT * FROM items ORDER BY id"))])


@app.get("/health")
def health():
    body = {"status": "ok" if HEALTHY else "broken", "version": VERSION, "revision": REVISION, "pid": os.getpid()}
    if not HEALTHY:
        # Like many real apps, the broken release leaks configuration in its error:
        # shipfab must mask it wherever it shows the body.
        body["error"] = f"cannot connect to {os.environ.get('DATABASE_URL', 'the database')}"
    return jsonify(body), (200 if HEALTHY else 500)
