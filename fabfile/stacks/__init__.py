"""One file per target stack: which steps run, in which order (see DESIGN.md)."""

from __future__ import annotations

from ..context import HostRun
from .base import Stack
from .compose import COMPOSE
from .gunicorn import GUNICORN
from .streamlit import STREAMLIT
from .worker import WORKER

STACKS: dict[str, Stack] = {s.name: s for s in (GUNICORN, WORKER, COMPOSE, STREAMLIT)}


def stack_for(name: str) -> Stack:
    return STACKS[name]


def check_health(run: HostRun) -> str:
    """`fab health-check` and `inv health`: the host's stack's health hook; a short detail when healthy,
    StepFailed naming what is wrong otherwise."""
    return str(stack_for(run.app.stack).health(run))
