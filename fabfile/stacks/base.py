"""What a stack is: named steps in phases, plus how a release proves it boots and how a
release that is already `current` is made to serve (rollback and undo use both)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..context import HostRun
from ..inventory import App

PHASES = ("prepare", "migrate", "publish", "verify")


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[HostRun], str | None]  # returns a short detail for the progress line
    phase: str = "prepare"


@dataclass(frozen=True)
class Stack:
    name: str
    steps: tuple[Step, ...]
    # Prove `release_id` imports and answers before any process serving users is touched.
    boot_check: Callable[[HostRun, str], str | None]
    # Make `release_id` (already `current`) serve: restart/reload + wait + health.
    activate: Callable[[HostRun, str], str | None]
    # `fab health-check` / `inv health` of this stack: a short detail, or StepFailed naming what is wrong;
    # `run.options.quick`: one probe, no waiting.
    health: Callable[[HostRun], str | None]
    # Shell run with the prune: what else goes with the pruned releases (None: nothing).
    prune: Callable[[App, list[str]], str] | None = None
