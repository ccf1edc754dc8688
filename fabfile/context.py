"""What one host's part of a run carries: the options, its connection, the release being
made, the host's state (read under the lock), the undo stack, timings and the outcome.

A leaf: everything below the task layer imports it, it imports none of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .inventory import DEFAULT_PARALLEL, App, Target
from .layout import Layout
from .output import Printer
from .release import Release
from .remote import Remote

DEPLOY_KINDS = ("dictionary", "schema", "patterns", "major")  # deploy --kind: what sort of change it is


@dataclass(frozen=True)
class Options:
    ref: str | None = None
    dry_run: bool = False
    full_restart: bool = False
    verbosity: int = 1
    skip_checks: bool = False
    skip_backup: bool = False
    json_path: str | None = None
    message: str = ""  # --message: what this deploy changes, in the release log
    kind: str = ""  # --kind: dictionary | schema | patterns | major (the guide's change types)
    parallel: int = DEFAULT_PARALLEL  # hosts worked on at once (the tasks: --parallel, else hosts.toml)
    batch: str = ""  # --batch N|P%: publish + verify that many hosts at a time ("" = all at once)
    max_fail: str = ""  # --max-fail N|P%: failed hosts tolerated before no new batch starts ("" = 0)
    all_or_nothing: bool = False  # a failed host rolls back the hosts that already published too
    quick: bool = False  # health hooks probe once, never wait for the app to recover (`inv health`)


@dataclass(frozen=True)
class Check:
    """One pre-flight or database check: its name, pass/fail, and what was found."""

    name: str
    ok: bool
    detail: str
    warning: bool = False  # shown, but never fails the run (the check itself could not be made)


@dataclass(frozen=True)
class HostState:
    """The host as read under the lock: `current`, the release directories, the release log
    (raw events, oldest first), the snapshot files and the shared .env (parsed, never shown)."""

    current: str = ""
    releases: tuple[str, ...] = ()  # directory names under releases/, sorted (complete or not)
    events: tuple[dict[str, Any], ...] = ()
    snapshots: tuple[str, ...] = ()  # file names under backups/
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Undo:
    """How to take one change back. `run` decides from the host's real state (it may find
    nothing to do) and returns a short detail; it must be safe to run twice."""

    name: str
    run: Callable[[], str | None]


@dataclass
class HostRun:
    """One host's part of a run."""

    target: Target
    remote: Remote
    printer: Printer
    options: Options
    release: Release = field(default_factory=lambda: Release(id="", ref=""))
    state: HostState = field(default_factory=HostState)
    timings: dict[str, float] = field(default_factory=dict)
    status: str = "pending"
    code: int = errors.OK
    reason: str = ""
    failed_step: str = ""
    primary: str = ""  # the host that backs up / migrates a shared database in this run
    checks: list[Check] = field(default_factory=list)
    undos: list[Undo] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # steps that returned normally (observed, in order)
    notes: list[str] = field(default_factory=list)  # what the undo left as it is, for the summary
    lock_token: str = ""  # set while this run holds the host's deploy lock
    python_version: str = ""  # sys.version of the app's python, as the pre-flight facts read it ("" unread)
    flipped_at: tuple[int, str] = (0, "")  # blue-green: nginx's access-log size at the flip, the new address

    @property
    def app(self) -> App:
        return self.target.app

    @property
    def layout(self) -> Layout:
        return Layout(self.target.app.deploy_to)

    @property
    def host(self) -> str:
        return self.remote.host

    def on_undo(self, name: str, fn: Callable[[], str | None]) -> None:
        """Register how to take back the change the next command makes: call it *before* the change."""
        self.undos.append(Undo(name, fn))

    def timed(self, name: str, fn: Callable[[], str | None], level: int = 1) -> str | None:
        """Run one step, print `[host] step ok 0.12s (detail)` (at `level`) or FAILED, record the time."""
        started = time.monotonic()
        try:
            with self.printer.status(f"[{self.host}] {name}"):
                detail = fn()
        except BaseException:
            elapsed = self.timings[name] = time.monotonic() - started
            self.printer.line(f"{name:<15} FAILED {elapsed:.2f}s", self.host, level=0)
            self.failed_step = self.failed_step or name
            raise
        elapsed = self.timings[name] = time.monotonic() - started
        self.done.append(name)
        suffix = f" ({detail})" if detail else ""
        self.printer.line(f"{name:<15} ok {elapsed:.2f}s{suffix}", self.host, level=level)
        return detail

    def fail(self, status: str, code: int, reason: str) -> None:
        self.status, self.code, self.reason = status, code, reason
