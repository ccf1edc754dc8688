"""gunicorn stack: Flask (any WSGI) app under gunicorn, behind nginx.

Automates seeds/000 (OntExtract): pg_dump, copy code, pip install, migrate, restart,
curl — with a verified snapshot, atomic releases and a graceful reload instead of stop/start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dbflow import backup_step, migrate_step
from ..steps.deploy_code import deploy_code
from ..steps.health_check import wait_healthy
from ..steps.pip_sync import pip_sync
from ..steps.restart_gunicorn import restart_gunicorn
from ..steps.switch_release import switch_release
from .base import Stack, Step

if TYPE_CHECKING:
    from ..flow import HostRun


def _deploy_code(run: HostRun) -> str:
    deploy_code(run.remote, run.app, run.layout, run.release)
    return run.release.revision[:12]


def _pip_sync(run: HostRun) -> str:
    return pip_sync(run.remote, run.app, run.layout, run.release)


def _switch(run: HostRun) -> str:
    switch_release(run.remote, run.layout, run.release.id)
    run.release.switched = True
    return f"current -> {run.release.id}"


def _restart(run: HostRun) -> str:
    return restart_gunicorn(run.remote, run.app, run.layout, run.release.id, full=run.options.full_restart)


def _health(run: HostRun) -> str:
    probe = wait_healthy(run.remote, run.target)
    return f"{probe.detail} in {probe.latency * 1000:.0f} ms"


def _activate(run: HostRun, release_id: str) -> str:
    detail = restart_gunicorn(run.remote, run.app, run.layout, release_id)
    wait_healthy(run.remote, run.target)
    return detail


GUNICORN = Stack(
    name="gunicorn",
    deploy_steps=(
        Step("backup_db", backup_step),
        Step("deploy_code", _deploy_code),
        Step("pip_sync", _pip_sync),
        Step("migrate", migrate_step),
        Step("switch_release", _switch, switches=True),
        Step("restart", _restart),
        Step("health_check", _health),
    ),
    activate=_activate,
)
