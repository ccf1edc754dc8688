"""What is on a host now: the current release and the list of releases (one round trip)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..layout import Layout
from ..remote import Remote

q = shlex.quote


@dataclass(frozen=True)
class HostState:
    current: str  # release id, "" when nothing is deployed
    releases: tuple[str, ...]  # sorted oldest -> newest

    def previous_of(self, release_id: str) -> str:
        """The newest release older than `release_id` ("" when there is none)."""
        older = [r for r in self.releases if r < release_id]
        return older[-1] if older else ""


def state_cmd(layout: Layout) -> str:
    return f"readlink {q(layout.current)} 2>/dev/null; echo ---; ls -1 {q(layout.releases)} 2>/dev/null; true"


def parse_state(stdout: str) -> HostState:
    head, _, tail = stdout.partition("---")
    link = head.strip()
    current = link.rstrip("/").rsplit("/", 1)[-1] if link else ""
    releases = tuple(sorted(line.strip() for line in tail.splitlines() if line.strip()))
    return HostState(current=current, releases=releases)


def read_state(remote: Remote, layout: Layout) -> HostState:
    return parse_state(remote.run(state_cmd(layout), change=False).stdout)
