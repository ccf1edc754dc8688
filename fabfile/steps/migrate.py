"""migrate: the app's migration command (`alembic upgrade head`, `flask db upgrade`,
`python manage.py migrate`, `npx prisma migrate deploy`...) run in a release directory
with the release's venv first on PATH, the shared .env exported and libpq's PG*
variables set. Its output (stdout and stderr, in order) is shown."""

from __future__ import annotations

import shlex

from ..db import DbConn, env_lines, run_with_db
from ..errors import StepFailed
from ..layout import Layout
from ..remote import Remote

q = shlex.quote


class MigrationFailed(StepFailed):
    """The migration command exited non-zero; `output` is what it printed."""

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def migrate_script(conn: DbConn, layout: Layout, release_id: str, command: str) -> str:
    rel = layout.release(release_id)
    env = f"{layout.shared}/.env"
    return "\n".join([
        *env_lines(conn),
        f"cd {q(rel)} || exit 1",
        f"if [ -f {q(env)} ]; then set -a && . {q(env)} && set +a || exit 1; fi",
        f'export VIRTUAL_ENV={q(rel + "/.venv")} PATH={q(rel + "/.venv/bin")}:"$PATH"',
        "{",
        command,
        "} 2>&1",
    ])


def output_tail(output: str, lines: int = 6) -> str:
    return "\n".join(output.strip().splitlines()[-lines:])


def migrate(remote: Remote, conn: DbConn, layout: Layout, release_id: str, command: str) -> str:
    """Run the migration command and show its output; MigrationFailed when it fails."""
    res = run_with_db(remote, conn, migrate_script(conn, layout, release_id, command), warn=True, show_output=False)
    if remote.dry_run:
        return "dry-run"
    output = res.stdout.rstrip()
    if output:
        remote.printer.line(output, remote.host)
    if not res.ok:
        raise MigrationFailed(
            f"{remote.host}: migration `{command}` failed (exit {res.exited}) in release {release_id}; its output:\n"
            f"{output_tail(output) or '(no output)'}",
            output,
        )
    return f"`{command}` ok"
