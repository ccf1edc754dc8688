"""gunicorn stack: Flask (any WSGI) app under gunicorn, behind nginx.

Automates seeds/000 (OntExtract): pg_dump, copy code, pip install, migrate, restart,
curl — as the symlink strategy (atomic releases, venv by hash), the gunicorn manager (a
boot check of the new code, then a graceful reload or a handover), the HTTP probe, and
the database plugin (a verified snapshot right before the migrations, run once).
"""

from __future__ import annotations

from .. import dbflow
from ..context import HostRun
from ..managers import gunicorn as manager
from ..probes.http import wait_healthy
from ..strategies import symlink
from .base import Stack, Step


def boot_check(run: HostRun, release_id: str) -> str:
    return manager.boot_check(run.remote, run.app, run.layout, release_id)


def restart(run: HostRun) -> str:
    return manager.restart_gunicorn(run.remote, run.app, run.layout, run.release.id, full=run.options.full_restart)


def health(run: HostRun) -> str:
    """The HTTP probe of [health], with retries until its timeout (`run.options.quick`: one probe)."""
    probe = wait_healthy(run.remote, run.target, timeout=0 if run.options.quick else None)
    return f"{probe.detail} in {probe.latency * 1000:.0f} ms"


def activate(run: HostRun, release_id: str) -> str:
    """Make `release_id` (already current) serve: reload or hand over, then health."""
    detail = manager.restart_gunicorn(run.remote, run.app, run.layout, release_id)
    wait_healthy(run.remote, run.target)
    return detail


GUNICORN = Stack(
    name="gunicorn",
    steps=(
        Step("deploy_code", symlink.deploy_code),
        Step("pip_sync", symlink.pip_sync),
        Step("backup_db", dbflow.backup_step, "migrate"),
        Step("migrate", dbflow.migrate_step, "migrate"),
        Step("boot_check", lambda run: boot_check(run, run.release.id)),
        Step("switch_release", lambda run: symlink.switch(run, activate), "publish"),
        Step("restart_gunicorn", restart, "publish"),
        Step("health_check", health, "verify"),
    ),
    boot_check=boot_check,
    activate=activate,
    health=health,
)
