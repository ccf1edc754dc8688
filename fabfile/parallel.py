"""Hosts worked on at once: a bounded thread pool, and the fleet's stop flag.

Signals arrive in the main thread only. While workers run, the main thread waits; a signal
there sets the stop flag and the wait goes on shielded: each worker stops at its next
step boundary (hostflow.run_steps asks the flag) and undoes its host. With one worker (or
one host) the work runs in the main thread itself, where a signal interrupts the running
step at once, as on a single host.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

from . import signals
from .errors import StepFailed

T = TypeVar("T")


class Stop:
    """Set once, with why: a signal (the run stops, every host undoes), or another host's
    failure before anything was published. Read by the workers at every step boundary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._signal = ""  # the signal's name ("Ctrl-C (SIGINT)"), when one stopped the run
        self._reason = ""

    def interrupt(self, exc: BaseException) -> None:
        with self._lock:
            if not self._signal:
                self._signal = exc.name if isinstance(exc, signals.Interrupted) else "Ctrl-C (SIGINT)"

    def halt(self, reason: str) -> None:
        with self._lock:
            self._reason = self._reason or reason

    @property
    def interrupted(self) -> bool:
        return bool(self._signal)

    @property
    def why(self) -> str:
        """What stopped the run ("" while nothing did)."""
        return f"interrupted ({self._signal})" if self._signal else self._reason

    def __bool__(self) -> bool:
        return bool(self._signal or self._reason)

    def check(self) -> None:
        """Raise (a fresh exception per caller) when the run was asked to stop."""
        if self._signal:
            raise signals.Interrupted(self._signal)
        if self._reason:
            raise StepFailed(self._reason)


def each(items: Iterable[T], fn: Callable[[T], object], size: int, stop: Stop) -> None:
    """fn(item) for every item, at most `size` at once; returns when all are done. `fn`
    must not raise (a worker's exception is re-raised here once every worker finished)."""
    items = list(items)
    if size <= 1 or len(items) <= 1:
        for item in items:
            try:
                fn(item)
            except KeyboardInterrupt as exc:  # outside a step: the item's own code marked it
                stop.interrupt(exc)
        return
    with ThreadPoolExecutor(max_workers=min(size, len(items)), thread_name_prefix="host") as pool:
        futures = [pool.submit(fn, item) for item in items]
        _wait(futures, stop)
    for future in futures:
        future.result()  # a bug in fn: surfaces with its traceback instead of vanishing


def _wait(futures: list[Future[object]], stop: Stop) -> None:
    pending = set(futures)
    while pending:
        try:
            _, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
        except KeyboardInterrupt as exc:
            stop.interrupt(exc)
            print(f"shipfab: {stop.why}: every host stops at its next step and is undone", file=sys.stderr, flush=True)
            with signals.shielded("the hosts finish their step and undo"):
                wait(pending)
            return
