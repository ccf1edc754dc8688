"""The shape of a fleet run, decided before anything changes (pure functions):
`--batch N|P%` and `--max-fail N|P%` as host counts, and the hosts cut into batches."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import UsageError
from .inventory import DEFAULT_PARALLEL

T = TypeVar("T")
SHARE = re.compile(r"(\d{1,6})(%?)")


@dataclass(frozen=True)
class Share:
    """A number of hosts, or a percentage of the fleet."""

    value: int
    percent: bool = False

    def of(self, total: int, round_up: bool) -> int:
        """How many hosts of `total` (a percentage rounds up for a batch, down for a tolerance)."""
        if not self.percent:
            return self.value
        exact = total * self.value / 100
        return math.ceil(exact) if round_up else math.floor(exact + 1e-9)

    def __str__(self) -> str:
        return f"{self.value}{'%' if self.percent else ''}"


def parse_share(text: str | int | None, option: str, minimum: int) -> Share | None:
    """`"3"` -> 3 hosts, `"25%"` -> a quarter of them; None/"" -> None. Anything else (a
    negative or fractional number, above 100%, below `minimum`) is a UsageError (exit 64)."""
    if text is None or text == "":
        return None
    match = SHARE.fullmatch(str(text).strip())
    if not match:
        raise UsageError(f"--{option} takes a number of hosts or a percentage (e.g. 2 or 25%), got {str(text)!r}")
    value, percent = int(match.group(1)), bool(match.group(2))
    if percent and (value > 100 or value < minimum):
        raise UsageError(f"--{option}: a percentage must be from {minimum}% to 100%, got {text}")
    if not percent and value < minimum:
        raise UsageError(f"--{option} must be at least {minimum}, got {text}")
    return Share(value, percent)


def parse_parallel(value: str | int | None, default: int = DEFAULT_PARALLEL) -> int:
    """--parallel N (hosts at once, 1..256); None -> the inventory's default."""
    if value is None or value == "":
        return default
    if not re.fullmatch(r"\d{1,4}", str(value).strip()) or not 1 <= int(value) <= 256:
        raise UsageError(f"--parallel takes a number of hosts from 1 to 256, got {str(value)!r}")
    return int(value)


def batches(items: Sequence[T], batch: Share | None) -> list[list[T]]:
    """`items` in order, cut into batches of `batch` hosts (None: one batch of all)."""
    if not items:
        return []
    size = len(items) if batch is None else max(1, batch.of(len(items), round_up=True))
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def tolerated(max_fail: Share | None, total: int) -> int:
    """How many failed hosts the run tolerates before no new batch starts (default 0)."""
    return 0 if max_fail is None else max_fail.of(total, round_up=False)
