"""One file per target stack: which steps run, in which order (see DESIGN.md)."""

from __future__ import annotations

from .base import Stack
from .compose import COMPOSE
from .gunicorn import GUNICORN
from .streamlit import STREAMLIT
from .worker import WORKER

STACKS: dict[str, Stack] = {s.name: s for s in (GUNICORN, WORKER, COMPOSE, STREAMLIT)}


def stack_for(name: str) -> Stack:
    return STACKS[name]
