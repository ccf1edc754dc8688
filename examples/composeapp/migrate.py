"""The example's migrations (python3 stdlib + the `psql` client of the base image, no driver).

`migrations/NNNN_name.sql` are applied in name order, each one with its record in
`schema_migrations` in ONE transaction (`psql -1`, `ON_ERROR_STOP`): a file that fails leaves
nothing of itself, the ones before it stay applied. The connection is libpq's PG* variables
(shipfab passes them to the one-off container by name; the password never on a command line).
Run as `python3 /app/migrate.py` in a container of the release (`docker compose run --rm`).
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PSQL = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]


def psql(sql: str, *args: str) -> str:
    res = subprocess.run([*PSQL, *args], input=sql, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stdout.write(res.stdout)
        print(f"Error: {res.stderr.strip()}", flush=True)
        sys.exit(1)
    return res.stdout


def main() -> None:
    psql("CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz DEFAULT now());")
    applied = set(psql("SELECT name FROM schema_migrations;", "-A", "-t").split())
    files = sorted((HERE / "migrations").glob("*.sql")) if (HERE / "migrations").is_dir() else []
    todo = [f for f in files if f.name not in applied]
    if not todo:
        print("migrate: nothing to apply", flush=True)
    for path in todo:
        print(f"migrate: applying {path.name}", flush=True)
        name = path.name.replace("'", "''")
        psql(path.read_text() + f"\nINSERT INTO schema_migrations (name) VALUES ('{name}');\n", "-1")
    print(f"migrate: {len(todo)} applied, {len(applied) + len(todo)} in all", flush=True)


if __name__ == "__main__":
    main()
