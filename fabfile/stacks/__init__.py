"""One file per target stack: which steps run, in which order (see DESIGN.md)."""

from __future__ import annotations

from .base import Stack
from .compose import COMPOSE
from .gunicorn import GUNICORN
from .worker import WORKER

STACKS: dict[str, Stack] = {GUNICORN.name: GUNICORN, WORKER.name: WORKER, COMPOSE.name: COMPOSE}


def stack_for(name: str) -> Stack:
    return STACKS[name]
