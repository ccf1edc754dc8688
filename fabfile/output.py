"""Everything shipfab prints goes through here: host prefixes, redaction, tables."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

from .secrets import secret_parts

MASK = "********"


class Redactor:
    """Masks known secret values in any text before it is printed or logged."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would mask ordinary words; secrets are longer than that.
        self._secrets.update(part for s in secrets if s for part in secret_parts(s) if len(part) >= 4)

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


class Printer:
    """Prints lines prefixed by host, redacted, at the chosen verbosity (0 quiet, 1, 2 verbose)."""

    def __init__(self, redact: Redactor | None = None, verbosity: int = 1) -> None:
        self.redact = redact or Redactor()
        self.verbosity = verbosity

    def line(self, text: str, host: str = "", level: int = 1, err: bool = False) -> None:
        if self.verbosity < level:
            return
        prefix = f"[{host}] " if host else ""
        stream = sys.stderr if err else sys.stdout
        try:
            for part in self.redact(text).splitlines() or [""]:
                print(f"{prefix}{part}", file=stream, flush=True)
        except BrokenPipeError:  # `fab ... | head`: the reader left; the deploy itself goes on
            self.verbosity = -1

    def error(self, text: str, host: str = "") -> None:
        self.line(text, host, level=0, err=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
