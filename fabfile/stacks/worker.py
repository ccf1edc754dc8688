"""worker stack: a Python data engine with no web server, run from the CLI, cron and
long-running workers (seeds/002, Edinburgh Finds).

The guide's checklist as one flow: code + venv (symlink strategy), the build commands
(`prisma generate`), the test gate (pytest in the new release, with its venv and the app's
.env: a failure stops everything before anything changed), a verified snapshot + the
migrations once (the database plugin), the smoke commands (a dry run on a small batch), then
the workers stop gracefully (a job in progress finishes on the old code), `current` switches,
the workers start from it, the cron block moves to it, and the health command must say
HEALTHY within the alert thresholds. Any failure undoes it all: the previous release, its
processes and its exact cron block.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from .. import dbflow
from ..context import HostRun
from ..errors import StepFailed
from ..inventory import WorkerSettings
from ..managers import workers
from ..probes.command import check_health
from ..steps import cron
from ..steps.release_commands import run_in_release
from ..strategies import symlink
from .base import Stack, Step

q = shlex.quote


def settings(run: HostRun) -> WorkerSettings:
    if run.app.worker is None:  # the inventory builds it for every worker app
        raise StepFailed(f"{run.host}: app {run.app.name} has no [worker] settings")
    return run.app.worker


def _commands(what: str) -> Callable[[HostRun], str]:
    """The step running the `worker.<what>` commands (gate, build, smoke) in the new release."""
    def step(run: HostRun) -> str:
        commands = getattr(settings(run), what)
        return run_in_release(run.remote, run.app.python, run.layout, run.release.id, commands, dbflow.app_env(run),
                              settings(run).command_timeout, what)
    return step


def boot_check(run: HostRun, release_id: str) -> str:
    """The release exists with its venv (a worker has no port to answer on)."""
    venv = f"{run.layout.release(release_id)}/.venv/bin/python"
    if run.remote.run(f"test -x {q(venv)} && echo OK || true", change=False).stdout.strip() != "OK" \
            and not run.options.dry_run:
        raise StepFailed(f"{run.host}: release {release_id} has no venv ({venv})")
    return "venv ok"


def stop_processes(run: HostRun) -> str:
    """Step: each worker stops gracefully (its job in progress finishes) before `current` moves.
    Undo: every process runs from `current` again (started only when it does not run)."""
    run.on_undo("start_processes", lambda: workers.start_processes(run.remote, run.app, dbflow.app_env(run)))
    return workers.stop_processes(run.remote, run.app)


def restart_processes(run: HostRun) -> str:
    """Step: the workers start from `current` (the switch's undo brings back the previous ones)."""
    return workers.restart_processes(run.remote, run.app, dbflow.app_env(run))


def install_cron(run: HostRun) -> str:
    """Step: the app's block (pointing at current) into the crontab; the previous block is kept
    with the previous release, and the undo puts it back byte for byte."""
    w, layout, app = settings(run), run.layout, run.app.name
    block = cron.render_block(app, layout, w.cron)
    before = cron.read_crontab(run.remote, w.crontab)
    old = cron.extract_block(before or "", app)
    written = cron.replace_block(before or "", app, block)

    def undo() -> str:
        now = cron.read_crontab(run.remote, w.crontab)
        if now == written and before is None:
            run.remote.run(cron.remove_cmd(w.crontab))
            return "crontab removed again (there was none)"
        if now == written:
            cron.write_crontab(run.remote, w.crontab, before or "")
            return "crontab restored byte for byte"
        if cron.extract_block(now or "", app) == old:
            return "the previous cron block is in place"
        cron.write_crontab(run.remote, w.crontab, cron.replace_block(now or "", app, old))
        return "previous cron block restored (other lines kept as they are now)"

    run.on_undo("restore_cron", undo)
    if run.state.current and run.state.current != run.release.id:
        cron.store(run.remote, layout, run.state.current, old)
    cron.store(run.remote, layout, run.release.id, block)
    if written != (before or ""):
        cron.write_crontab(run.remote, w.crontab, written)
    where = w.crontab or "the user's crontab"
    return f"{len(w.cron)} entr{'y' if len(w.cron) == 1 else 'ies'} in {where}" if block else f"no entries ({where})"


def activate_cron(run: HostRun, release_id: str) -> str:
    """The cron block that went with `release_id` (stored with it), else rendered from the settings."""
    w = settings(run)
    block = cron.read_stored(run.remote, run.layout, release_id)
    if block is None:
        block = cron.render_block(run.app.name, run.layout, w.cron)
    cron.install_block(run.remote, w.crontab, run.app.name, block)
    return "cron block in place"


def health(run: HostRun) -> str:
    """Step: the health command in current must say HEALTHY, within the alert thresholds."""
    return check_health(run.remote, run.app, dbflow.app_env(run))


def activate(run: HostRun, release_id: str) -> str:
    """Make `release_id` (already current) run: its processes, its cron block, then health."""
    procs = workers.restart_processes(run.remote, run.app, dbflow.app_env(run))
    activate_cron(run, release_id)
    return f"{procs}; {health(run)}"


WORKER = Stack(
    name="worker",
    steps=(
        Step("deploy_code", symlink.deploy_code),
        Step("pip_sync", symlink.pip_sync),
        Step("build", _commands("build")),
        Step("gate", _commands("gate")),
        Step("backup_db", dbflow.backup_step, "migrate"),
        Step("migrate", dbflow.migrate_step, "migrate"),
        Step("smoke", _commands("smoke"), "publish"),
        Step("stop_processes", stop_processes, "publish"),
        Step("switch_release", lambda run: symlink.switch(run, activate), "publish"),
        Step("restart_processes", restart_processes, "publish"),
        Step("install_cron", install_cron, "publish"),
        Step("health_check", health, "verify"),
    ),
    boot_check=boot_check,
    activate=activate,
    health=health,
)
