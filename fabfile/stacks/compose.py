"""compose stack: a Docker Compose app, releases as images, in place or behind nginx.

Automates seeds/003 (OntologyDownload: build, standby color, /health and /ready, smoke tests,
flip the nginx upstream, watch the 5xx rate, automatic rollback; canary steps with an
error-rate gate) and seeds/004 (Business Brain: git pull, pgvector checks, build, down/up,
health of backend and frontend, rollback = previous code + SQL backup): the symlink
strategy's release directories (the build context), the compose strategy (images tagged by
release; in-place | blue-green | canary), the HTTP and error-rate probes, and the database
plugin (snapshot before migrate; migrate inside a one-off container of the new release).
"""

from __future__ import annotations

from .. import dbflow
from ..strategies import compose, symlink
from .base import Stack, Step

COMPOSE = Stack(
    name="compose",
    steps=(
        Step("deploy_code", symlink.deploy_code),
        Step("build_images", compose.build_images),
        Step("backup_db", dbflow.backup_step, "migrate"),
        Step("migrate", lambda run: dbflow.migrate_step(run, compose.migrate_command), "migrate"),
        Step("start_standby", compose.start_standby, "publish"),
        Step("switch_release", lambda run: symlink.switch(run, compose.activate), "publish"),
        Step("go_live", compose.go_live, "publish"),
        Step("watch", compose.watch, "verify"),
    ),
    boot_check=compose.boot_check,
    activate=compose.activate,
    health=compose.health,
    prune=compose.prune_images,
)
