"""Signals: SIGINT, SIGTERM and SIGHUP all mean "stop, undo, log, unlock".

`interruptible()` turns SIGTERM (a CI runner cancelling) and SIGHUP (a closed terminal)
into the same KeyboardInterrupt as Ctrl-C, for the length of a run. `shielded()` wraps an
undo: a further signal is noted and announced, never allowed to abandon it halfway.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class Interrupted(KeyboardInterrupt):
    """A signal asked the run to stop; `name` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(NAMES.get(signum, f"signal {signum}"))


@contextlib.contextmanager
def _handlers(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted (a KeyboardInterrupt) while inside."""
    with _handlers(_raise):
        yield


@contextlib.contextmanager
def shielded(what: str) -> Iterator[None]:
    """Signals do not interrupt the block; each one is announced on stderr."""

    def note(signum: int, frame: FrameType | None) -> None:
        print(f"shipfab: {NAMES.get(signum, signum)} received while {what}: finishing it first", file=sys.stderr,
              flush=True)

    with _handlers(note):
        yield
