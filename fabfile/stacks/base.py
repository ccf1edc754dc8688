"""What a stack is: an ordered list of named steps plus how to make a release live."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..flow import HostRun


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[HostRun], str | None]  # returns a short detail for the progress line
    switches: bool = False  # after this step the host serves (or tries to serve) the new release


@dataclass(frozen=True)
class Stack:
    name: str
    deploy_steps: tuple[Step, ...]
    # Make `release_id` (already `current`) serve: restart + wait + health. Used by
    # rollback and by the undo of a failed deploy.
    activate: Callable[[HostRun, str], str | None]
