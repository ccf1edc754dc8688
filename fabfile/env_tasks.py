"""`fab env.push` / `fab env.diff`: the remote shared/.env, handled without ever showing a value."""

from __future__ import annotations

import os
from pathlib import Path

from fabric import task

from . import fleet
from .cli import printer_for, run_cli, targets
from .context import HostRun, Options
from .errors import UsageError
from .inventory import Target
from .managers.gunicorn import restart_gunicorn
from .optional_positional import OptionalPositionalTask
from .output import Printer
from .secret_rule import env_diff, parse_env
from .steps import env_file


def _local_values(file: str) -> dict[str, str]:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file}: no such file")
    try:
        return parse_env(path.read_text(encoding="utf-8"), file)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{file}: not UTF-8 text (byte {exc.start}); python-dotenv and the app read it as UTF-8") from None


def _targets(c: object, printer: Printer, new: dict[str, str]) -> list[Target]:
    """The hosts -H names; the local file's secrets (by each app's rule) join the redaction filter."""
    hosts = targets(c, printer)
    for target in hosts:
        printer.redact.add_env(new, target.app)
    return hosts


def _describe(diff: dict[str, list[str]]) -> str:
    parts = [f"{k}: {', '.join(v)}" for k, v in diff.items() if v]
    return "; ".join(parts) or "no differences"


@task(klass=OptionalPositionalTask, positional=["file"],
      help={"file": "local env file (default .env)", "restart": "reload the app afterwards"})
def push(c, file=".env", restart=False, dry_run=False):
    """Upload a local env file to shared/.env (validated, atomic, 0600; previous kept as .env.previous)."""

    def run_all() -> int:
        new = _local_values(file)
        printer = printer_for()
        options = Options(dry_run=dry_run)

        def step(run: HostRun) -> str:
            old = run.state.env
            env_file.push(run.remote, run.layout, file, f"{os.getpid()}")
            detail = _describe(env_diff(old, new))
            if restart and run.state.current:
                detail += "; " + restart_gunicorn(run.remote, run.app, run.layout, run.state.current)
            elif run.state.current:
                detail += f"; the app reads it on its next reload: fab -H {run.remote.host} restart"
            return detail

        return fleet.each_host(_targets(c, printer, new), printer, options, "env.push", step)

    run_cli(run_all)


@task(klass=OptionalPositionalTask, positional=["file"], help={"file": "local env file (default .env)"})
def diff(c, file=".env"):
    """Keys added, removed and changed between a local env file and shared/.env: names only, never values."""

    def run_all() -> int:
        new = _local_values(file)
        printer = printer_for()

        def step(run: HostRun) -> str:
            return _describe(env_diff(run.state.env, new))

        return fleet.each_host(_targets(c, printer, new), printer, Options(), "env.diff", step, locked=False)

    run_cli(run_all)
