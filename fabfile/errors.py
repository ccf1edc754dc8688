"""Errors shipfab raises on purpose, each with the exit code the CLI returns for it."""

from __future__ import annotations

# Exit codes, documented in the README ("Exit codes").
OK = 0
FAILED_ROLLED_BACK = 1
FAILED_MANUAL_ACTION = 2
LOCK_HELD = 3
PREFLIGHT_FAILED = 4
USAGE = 64


class ShipfabError(Exception):
    """An expected failure: printed as one clear message, never as a traceback."""

    exit_code = FAILED_ROLLED_BACK


class InventoryError(ShipfabError):
    """hosts.toml is missing or invalid, or -H names nothing usable."""

    exit_code = USAGE


class UsageError(ShipfabError):
    """A task was called with arguments that cannot work (unknown release id...)."""

    exit_code = USAGE


class LockHeld(ShipfabError):
    """Another deploy holds the lock on a host."""

    exit_code = LOCK_HELD


class PreflightFailed(ShipfabError):
    """A host failed a pre-flight check (unreachable, bad host key...): nothing was changed."""

    exit_code = PREFLIGHT_FAILED


class StepFailed(ShipfabError):
    """A step's remote command or check failed; the message says why."""


class ManualAction(StepFailed):
    """A change could not be undone: a person must look; the message says what to run."""

    exit_code = FAILED_MANUAL_ACTION
