"""The sample app's database: DATABASE_URL from .env (the shared one), else SQLite in
data/ (a shared dir, so every release uses the same file)."""

import os
import re
from pathlib import Path

from dotenv import load_dotenv
from sqlalchemy import create_engine

HERE = Path(__file__).resolve().parent
load_dotenv(HERE / ".env")


def database_url() -> str:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{HERE / 'data' / 'app.db'}"
    # A libpq URL (postgres:// or postgresql://, as psql reads it) names no driver: psycopg2.
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg2://", url)


engine = create_engine(database_url())  # connects on first use
