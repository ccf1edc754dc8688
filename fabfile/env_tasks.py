"""`fab env.push` / `fab env.diff`: the remote shared/.env, handled without ever showing a value."""

from __future__ import annotations

import os
from pathlib import Path

from fabric import task

from . import flow
from .cli import printer_for, run_cli, targets
from .errors import UsageError
from .flow import HostRun, Options
from .secrets import env_diff, parse_env
from .steps import env_file
from .steps.restart_gunicorn import restart_gunicorn


def _local_values(file: str) -> dict[str, str]:
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{file}: no such file")
    return parse_env(path.read_text(), file)


def _describe(diff: dict[str, list[str]]) -> str:
    parts = [f"{k}: {', '.join(v)}" for k, v in diff.items() if v]
    return "; ".join(parts) or "no differences"


@task(positional=["file"], help={"file": "local env file (default .env)", "restart": "reload the app afterwards"})
def push(c, file=None, restart=False, dry_run=False):
    """Upload a local env file to shared/.env (validated, atomic, 0600; previous kept as .env.previous)."""

    def run_all() -> int:
        new = _local_values(file or ".env")
        printer = printer_for()
        printer.redact.add(new.values())
        options = Options(dry_run=dry_run)

        def step(run: HostRun) -> str:
            old = env_file.read_remote_env(run.remote, run.layout)
            env_file.push(run.remote, run.layout, file or ".env", f"{os.getpid()}")
            detail = _describe(env_diff(old, new))
            if restart and run.state.current:
                detail += "; " + restart_gunicorn(run.remote, run.app, run.layout, run.state.current)
            elif run.state.current:
                detail += f"; the app reads it on its next reload: fab -H {run.remote.host} restart"
            return detail

        return flow.each_host(targets(c, printer), printer, options, "env.push", step)

    run_cli(run_all)


@task(positional=["file"], help={"file": "local env file (default .env)"})
def diff(c, file=None):
    """Keys added, removed and changed between a local env file and shared/.env: names only, never values."""

    def run_all() -> int:
        new = _local_values(file or ".env")
        printer = printer_for()
        printer.redact.add(new.values())

        def step(run: HostRun) -> str:
            return _describe(env_diff(env_file.read_remote_env(run.remote, run.layout), new))

        return flow.each_host(targets(c, printer), printer, Options(), "env.diff", step, locked=False)

    run_cli(run_all)
