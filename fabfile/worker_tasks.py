"""`fab worker.gate | worker.restart | worker.cron | worker.stop`: the worker stack's own steps,
alone, on the release `current` points at (under the deploy lock)."""

from __future__ import annotations

from fabric import task

from . import dbflow
from .cli import known_release, on_each_host, options_for
from .context import HostRun
from .errors import UsageError
from .managers import workers
from .release import Release
from .stacks import worker as stack
from .steps.release_commands import run_in_release


def _current(run: HostRun) -> str:
    if run.app.worker is None:
        raise UsageError(f"{run.host}: app {run.app.name} is not a worker app (stack {run.app.stack})")
    run.release = Release(id=known_release(run, run.state.current), ref="")
    return run.release.id


@task
def gate(c, verbose=False):
    """Run the test gate (worker.gate commands) in the current release, with its venv and the app's .env."""
    printer, options = options_for(False, verbose, False)

    def step(run: HostRun) -> str:
        release = _current(run)
        w = stack.settings(run)
        return run_in_release(run.remote, run.app.python, run.layout, release, w.gate, dbflow.app_env(run),
                              w.command_timeout, "gate")

    on_each_host(c, printer, options, "gate", step)


@task
def restart(c, dry_run=False, verbose=False):
    """Stop each worker process gracefully (its job finishes), then start it from current."""
    printer, options = options_for(dry_run, verbose, False)
    on_each_host(c, printer, options, "restart_processes",
                 lambda run: _current(run) and stack.restart_processes(run))


@task
def cron(c, dry_run=False, verbose=False):
    """Put the current release's cron block in the crontab (other lines untouched)."""
    printer, options = options_for(dry_run, verbose, False)
    on_each_host(c, printer, options, "install_cron", lambda run: stack.activate_cron(run, _current(run)))


@task
def stop(c, dry_run=False, verbose=False):
    """Stop every worker process gracefully (the sandbox: `fab -H local-worker worker.stop`)."""
    printer, options = options_for(dry_run, verbose, False)
    on_each_host(c, printer, options, "stop_processes",
                 lambda run: _current(run) and workers.stop_processes(run.remote, run.app))
