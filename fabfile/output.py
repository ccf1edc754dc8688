"""Everything shipfab prints goes through here: host prefixes, redaction, tables."""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .secret_rule import env_secrets, secret_forms, url_passwords

if TYPE_CHECKING:
    from .inventory import App

MASK = "********"


class Redactor:
    """Masks known secret values, in every form (see secrets.secret_forms), in text and in
    data about to be serialized. Thread-safe: hosts of a fleet add their secrets concurrently."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Known secret values (and the passwords of URLs among them)."""
        forms = {form for s in secrets if s for part in (s, *url_passwords(s)) for form in secret_forms(part)}
        with self._lock:
            if not forms <= self._forms:
                self._forms |= forms
                self._pattern = None

    def add_env(self, values: Mapping[str, str], app: App | None = None) -> None:
        """The secrets of a parsed .env, by the rule and the app's `secret_keys` / `public_keys`."""
        public, secret = (app.public_keys, app.secret_keys) if app is not None else ((), ())
        self.add(env_secrets(values, public, secret))

    def __call__(self, text: str) -> str:
        with self._lock:
            if self._pattern is None and self._forms:
                # Longest first: a form that contains another is masked whole.
                self._pattern = re.compile("|".join(map(re.escape, sorted(self._forms, key=len, reverse=True))))
            pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text

    def mask_data(self, obj: Any) -> Any:
        """A copy of a dict/list structure with every string masked: call it *before*
        serializing (JSON escaping would otherwise hide a secret from the text filter)."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, Mapping):
            return {self.mask_data(k): self.mask_data(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.mask_data(v) for v in obj]
        return obj


class Printer:
    """Prints lines prefixed by host, redacted, at the chosen verbosity (0 quiet, 1, 2 verbose),
    one whole line at a time from any thread. On a terminal, at normal verbosity, a step that
    runs longer than a second shows one live status line with its elapsed seconds."""

    def __init__(self, redact: Redactor | None = None, verbosity: int = 1, live: bool | None = None) -> None:
        self.redact = redact or Redactor()
        self.verbosity = verbosity
        self.live = sys.stdout.isatty() if live is None else live
        self._lock = threading.Lock()
        self._status = ""  # the live line now on screen ("" when none)

    def line(self, text: str, host: str = "", level: int = 1, err: bool = False) -> None:
        if self.verbosity < level:
            return
        prefix = f"[{host}] " if host else ""
        stream = sys.stderr if err else sys.stdout
        try:
            with self._lock:
                self._clear()
                for part in self.redact(text).splitlines() or [""]:
                    print(f"{prefix}{part}", file=stream, flush=True)
        except BrokenPipeError:  # `fab ... | head`: the reader left; the deploy itself goes on
            self.verbosity = -1

    def error(self, text: str, host: str = "") -> None:
        self.line(text, host, level=0, err=True)

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        """While the block runs: `text ... Ns` on one rewritten line (terminal, verbosity 1 only)."""
        if not self.live or self.verbosity != 1:
            yield
            return
        done = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            while not done.wait(1.0):
                with self._lock:
                    self._status = f"{self.redact(text)} ... {time.monotonic() - started:.0f}s"
                    sys.stdout.write(f"\r{self._status}\033[K")
                    sys.stdout.flush()

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            with self._lock:
                self._clear()

    def _clear(self) -> None:
        """Erase the live line (caller holds the lock)."""
        if self._status:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
            self._status = ""


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


ERROR_LINE = re.compile(r"^(?:\w*(?:Error|Exception)\b|(?:\w+\.)+[A-Z]\w*:|ERROR\b|Error\b|FAILED\b)")


def first_error(output: str) -> str:
    """The first line that names an error (the root cause of a chained traceback), or ""."""
    return next((line.strip() for line in output.splitlines() if ERROR_LINE.match(line.strip())), "")


class LineStream:
    """A file-like sink for a command's output that hands on complete lines as they come."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit = emit
        self.pending = ""

    def write(self, data: str) -> int:
        self.pending += data
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.emit(line)
        return len(data)

    def flush(self) -> None:
        """Called after every write: a partial line waits for its end (see `close`)."""

    def close(self) -> None:
        if self.pending:
            self.emit(self.pending)
            self.pending = ""
