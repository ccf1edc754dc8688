"""rollback: choose the release to go back to (previous, or --to ID)."""

from __future__ import annotations

from ..errors import UsageError
from .host_state import HostState


def rollback_target(state: HostState, to: str | None, host: str) -> str:
    """The release to switch to; an unknown id fails listing the valid ones."""
    if not state.current:
        raise UsageError(f"{host}: nothing is deployed yet, there is nothing to roll back")
    if to:
        if to not in state.releases:
            valid = ", ".join(r for r in state.releases if r != state.current) or "(none)"
            raise UsageError(f"{host}: unknown release {to!r}; valid ids: {valid}")
        if to == state.current:
            raise UsageError(f"{host}: {to} is already the current release")
        return to
    previous = state.previous_of(state.current)
    if not previous:
        raise UsageError(f"{host}: no release older than the current one ({state.current}) to roll back to")
    return previous
