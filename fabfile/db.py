"""Where an app's database is and how commands reach it without showing its password.

Settings come from hosts.toml `[apps.NAME.database]`; for PostgreSQL what it leaves
unset comes from DATABASE_URL in the host's shared/.env. The password reaches the
remote command on stdin (`IFS= read -r PGPASSWORD`), never on a command line, and is
added to the output redaction as soon as it is known.

Which host handles the database: PostgreSQL is one database for the whole group, so
backups, migrations and restores run once, on the primary host (the one marked
`primary`, else the first); SQLite is a file on each host, so every host handles its own.
"""

from __future__ import annotations

import shlex
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from invoke.runners import Result

from . import errors
from .errors import StepFailed, UsageError
from .inventory import DatabaseSettings, Target
from .layout import Layout
from .remote import Remote
from .steps.env_file import read_remote_env

q = shlex.quote
PG_SCHEMES = ("postgres", "postgresql")


@dataclass(frozen=True)
class DbConn:
    """One host's database, as seen from that host."""

    engine: str
    name: str = ""
    user: str = ""
    host: str = ""  # "" = the local socket
    port: int = 5432
    password: str = field(default="", repr=False)
    pg_bin: str = ""
    path: str = ""  # sqlite: absolute path of the database file on the host

    def tool(self, name: str) -> str:
        """pg_dump / pg_restore / psql, from `pg_bin` when set."""
        return q(f"{self.pg_bin.rstrip('/')}/{name}") if self.pg_bin else name

    def label(self) -> str:
        if self.engine == "sqlite":
            return f"sqlite {self.path}"
        return f"postgresql {self.user or '(default user)'}@{self.host or '(socket)'}:{self.port}/{self.name}"


def parse_database_url(url: str) -> dict[str, str | int]:
    """postgresql://user:pass@host:port/name (also postgres:// and SQLAlchemy's postgresql+driver://).

    Errors never repeat the URL: it holds the password."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in PG_SCHEMES:
        raise UsageError(f"DATABASE_URL is not a PostgreSQL URL (scheme {parts.scheme!r})")
    try:
        port = parts.port
    except ValueError:
        raise UsageError("DATABASE_URL has an invalid port") from None
    out: dict[str, str | int] = {
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "host": unquote(parts.hostname or ""),
        "name": unquote(parts.path.lstrip("/")),
    }
    if port:
        out["port"] = port
    return out


def merge_settings(db: DatabaseSettings, url: dict[str, str | int], shared: str) -> DbConn:
    """hosts.toml values win; DATABASE_URL fills what they leave unset."""
    if db.engine == "sqlite":
        return DbConn("sqlite", path=f"{shared}/{db.path}")

    def pick(key: str, default: str | int = "") -> str | int:
        return getattr(db, key) or url.get(key) or default

    return DbConn(
        "postgresql", name=str(pick("name")), user=str(pick("user")), host=str(pick("host")), port=int(pick("port", 5432)),
        password=str(pick("password")), pg_bin=db.pg_bin,
    )


def connection(remote: Remote, target: Target, env: Mapping[str, str] | None = None) -> DbConn:
    """The database of `target` (DATABASE_URL from its shared/.env when allowed: `env`, the .env
    already read with the host's state, else read now); its password is masked in all output
    from here on."""
    db = target.app.database
    if db is None:
        raise UsageError(f"{remote.host}: app {target.app.name!r} has no [apps.{target.app.name}.database] settings")
    layout = Layout(target.app.deploy_to)
    if db.engine != "sqlite" and db.url_from_env:
        url = (env if env is not None else read_remote_env(remote, layout)).get("DATABASE_URL", "")
    else:
        url = ""
    conn = merge_settings(db, parse_database_url(url) if url else {}, layout.shared)
    remote.printer.redact.add([conn.password, quote(conn.password, safe="")])
    if conn.engine != "sqlite" and not conn.name:
        raise UsageError(f"{remote.host}: no database name: set name in [apps.{target.app.name}.database] "
                         f"or DATABASE_URL in {layout.shared}/.env")
    return conn


def env_lines(conn: DbConn) -> list[str]:
    """Shell lines giving libpq its settings: the password from stdin (see `secret_stdin`)."""
    if conn.engine == "sqlite":
        return []
    lines = ["IFS= read -r PGPASSWORD && export PGPASSWORD || exit 1"] if conn.password else []
    env = {"PGHOST": conn.host, "PGPORT": str(conn.port), "PGUSER": conn.user, "PGDATABASE": conn.name}
    return lines + ["export " + " ".join(f"{k}={q(v)}" for k, v in env.items() if v)]


def secret_stdin(conn: DbConn) -> str | None:
    """What a script built with `env_lines` reads on stdin."""
    return conn.password + "\n" if conn.password and conn.engine != "sqlite" else None


def run_with_db(
    remote: Remote, conn: DbConn, script: str, *, change: bool = True, warn: bool = False, show_output: bool = True
) -> Result:
    """Run a script that starts with `env_lines(conn)`, feeding it the password."""
    return remote.run(script, change=change, warn=warn, show_output=show_output, stdin=secret_stdin(conn))


# ---------------------------------------------------------------- which host


def primary(targets: list[Target]) -> Target:
    """The host marked `primary`, else the first one."""
    return next((t for t in targets if t.primary), targets[0])


def primary_first(targets: list[Target]) -> list[Target]:
    """The primary host first: its migrations run before any other host switches."""
    first = primary(targets)
    return [first] + [t for t in targets if t is not first]


def handles_database(target: Target, primary_name: str) -> bool:
    """Does this host back up / migrate / restore in this run?"""
    db = target.app.database
    return db is not None and (db.engine == "sqlite" or target.name == primary_name)


_ASKING = threading.Lock()


def confirm(question: str, yes: bool) -> None:
    """Ask on the terminal; refuse clearly when there is none and --yes was not given."""
    if yes:
        return
    if not sys.stdin or not sys.stdin.isatty():
        raise UsageError(f"{question} Not confirmed: stdin is not a terminal; add --yes to go ahead")
    with _ASKING:  # hosts of a fleet ask one at a time
        answer = input(f"{question} [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise UsageError("not confirmed: nothing was changed")


class DatabaseNotRestored(StepFailed):
    """A migration failed and restoring the snapshot failed too: a person must look."""

    exit_code = errors.FAILED_MANUAL_ACTION
