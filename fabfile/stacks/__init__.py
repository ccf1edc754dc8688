"""One file per target stack: which steps run, in which order (see DESIGN.md)."""

from __future__ import annotations

from .base import Stack
from .gunicorn import GUNICORN
from .streamlit import STREAMLIT

STACKS: dict[str, Stack] = {GUNICORN.name: GUNICORN, STREAMLIT.name: STREAMLIT}


def stack_for(name: str) -> Stack:
    return STACKS[name]
