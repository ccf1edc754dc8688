"""migrate: the app's migration command (`alembic upgrade head`, `flask db upgrade`,
`python manage.py migrate`, `npx prisma migrate deploy`...) run in a release directory
with the release's venv first on PATH, the app's environment and libpq's PG* variables,
through the one launcher (launcher.py: no shell ever evaluates a .env value, no value is
ever on a command line). The output (stdout and stderr, in order) streams line by line as it runs;
a failure names its first error line (the real cause), then the last lines.
"""

from __future__ import annotations

import shlex

from ..db import DbConn
from ..errors import StepFailed
from ..layout import Layout
from ..output import LineStream, first_error
from ..remote import Remote
from .launcher import LAUNCHER, launch_cmd, launch_stdin

q = shlex.quote
__all__ = ["LAUNCHER", "MigrationFailed", "launcher_stdin", "migrate", "migrate_cmd", "pg_env"]

# `ModuleNotFoundError: ...`, `psycopg2.errors.UndefinedTable: ...`, `ERROR [alembic...] ...`, `Error: ...`


class MigrationFailed(StepFailed):
    """The migration command exited non-zero; `output` is what it printed."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def pg_env(conn: DbConn) -> dict[str, str]:
    """libpq's settings for the migration's environment (the password included: it goes on stdin)."""
    if conn.engine == "sqlite":
        return {}
    env = {"PGHOST": conn.host, "PGPORT": str(conn.port), "PGUSER": conn.user, "PGDATABASE": conn.name,
           "PGPASSWORD": conn.password}
    return {k: v for k, v in env.items() if v}


def migrate_cmd(python: str, layout: Layout, release_id: str, command: str) -> str:
    return launch_cmd(python, layout.release(release_id), command)


def launcher_stdin(conn: DbConn, app_env: dict[str, str]) -> str:
    """The one JSON line the launcher reads: libpq's settings, then the app's .env (it wins)."""
    return launch_stdin({**pg_env(conn), **app_env})


def output_tail(output: str, lines: int = 6) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])


def migrate(remote: Remote, conn: DbConn, layout: Layout, release_id: str, command: str, python: str,
            app_env: dict[str, str], shown: str = "") -> str:
    """Run the migration command, streaming its output; MigrationFailed (naming its first error) when it fails.
    `shown` names the command in messages when `command` wraps it (a one-off container)."""
    shown = shown or command
    stream = LineStream(lambda line: remote.printer.line(line, remote.host, level=1))
    res = remote.run(migrate_cmd(python, layout, release_id, command), warn=True, show_output=False,
                     stdin=launcher_stdin(conn, app_env), out_stream=stream)
    stream.close()
    if remote.dry_run:
        return "dry-run"
    output = res.stdout.rstrip()
    if not res.ok:
        cause = first_error(output)
        raise MigrationFailed(
            f"{remote.host}: migration `{shown}` failed (exit {res.exited}) in release {release_id}: "
            f"{cause or 'it printed no error line'}\nits last lines:\n{output_tail(output) or '(no output)'}",
            output,
        )
    return f"`{shown}` ok"
