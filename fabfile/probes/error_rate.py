"""The error-rate probe: what nginx's access log says about one upstream address.

shipfab reads this log format (put it in nginx.conf, `http { ... }`):

    log_format shipfab '$time_iso8601 $status $upstream_addr $upstream_status $request_time "$request"';
    access_log /var/log/nginx/app.log shipfab;

A request nginx tried on several servers (`proxy_next_upstream`) logs them all:
`127.0.0.1:8101, 127.0.0.1:8102 502, 200`; each attempt counts for its own server. An
attempt is an error when its upstream status is 5xx (or `-`: no answer), a success when it
is 2xx/3xx; 4xx answers count in the total only. Only the lines written after an offset (the
log's size when the window began) are read, and only those naming the address (grep on the host).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from ..remote import Remote

q = shlex.quote


@dataclass(frozen=True)
class Counts:
    total: int = 0
    errors: int = 0
    ok: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.total if self.total else 0.0

    @property
    def success(self) -> float:
        return self.ok / self.total if self.total else 0.0

    def describe(self) -> str:
        return (f"{self.total} requests, {self.errors} 5xx ({100 * self.error_rate:.1f} %), "
                f"success {100 * self.success:.1f} %")


def attempts(line: str) -> list[tuple[str, str]]:
    """(upstream address, upstream status) of each attempt one log line records ([] if none)."""
    head, sep, _ = line.partition(' "')
    if not sep:
        return []
    tokens = head.split(" ")
    middle = tokens[2:-1]  # after time and status, before request_time: addrs then statuses
    if len(middle) < 2 or len(middle) % 2:
        return []
    k = len(middle) // 2
    addrs = [t.rstrip(",") for t in middle[:k]]
    statuses = [t.rstrip(",") for t in middle[k:]]
    return list(zip(addrs, statuses, strict=True))


def count(lines: Iterable[str], addr: str) -> Counts:
    total = errors = ok = 0
    for line in lines:
        for a, status in attempts(line):
            if a != addr:
                continue
            total += 1
            if status == "-" or status.startswith("5"):
                errors += 1
            elif status[:1] in ("2", "3"):
                ok += 1
    return Counts(total, errors, ok)


def size_cmd(log: str) -> str:
    return f"stat -c %s {q(log)} 2>/dev/null || echo 0"


def since_cmd(log: str, offset: int, addr: str) -> str:
    """The lines after byte `offset` that name `addr`."""
    return f"tail -c +{int(offset) + 1} {q(log)} 2>/dev/null | grep -F -- {q(addr)} || true"


def log_size(remote: Remote, log: str) -> int:
    out = remote.run(size_cmd(log), change=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def counts_since(remote: Remote, log: str, offset: int, addr: str) -> Counts:
    out = remote.run(since_cmd(log, offset, addr), change=False, show_output=False).stdout
    return count(out.splitlines(), addr)
