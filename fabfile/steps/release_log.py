"""The release log: .shipfab/releases.jsonl, append-only, one JSON object per event. It is
the truth about which releases exist and which served; the directory listing is not.

- A deploy writes one event for its release: `status` success or failed.
- A rollback writes `status: rolled_back` (+ `rolled_back_to`) for the release it left and
  `status: success, event: rollback_to` for the one it went back to.
- Events about one release fold (later fields win). A release directory with no
  `success`/`rolled_back` record never finished deploying: it is incomplete.

Pure functions decide from the events: which release served before `current` (the
rollback target), what prune removes, which snapshots stay.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ..context import HostState
from ..errors import UsageError
from ..layout import Layout

q = shlex.quote
COMPLETE = ("success", "rolled_back")  # finished deploying (served, or served and was left)


def fold(events: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """release id -> its record (every event about it merged, later fields win), oldest id first."""
    records: dict[str, dict[str, Any]] = {}
    for event in events:
        records.setdefault(event["release"], {}).update(event)
    return dict(sorted(records.items()))


def served(events: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[str]:
    """The releases in the order they went live: successful deploys and rollback targets."""
    order = []
    for event in events:
        if event.get("rolled_back_to"):
            order.append(str(event["rolled_back_to"]))
        elif event.get("event", "deploy") == "deploy" and event.get("status") == "success":
            order.append(event["release"])
    return order


def status_of(state: HostState, release_id: str) -> str:
    """success / rolled_back / failed, or `incomplete` (a directory the log never completed)."""
    return str(fold(state.events).get(release_id, {}).get("status") or "incomplete")


def previous_served(state: HostState, current: str | None = None) -> str:
    """The release that served before `current` and may serve again: it exists and its last
    word is success ("" when there is none). Never a failed, rolled back or incomplete one."""
    current = state.current if current is None else current
    records = fold(state.events)
    for release_id in reversed(served(state.events)):
        if release_id != current and release_id in state.releases and records.get(release_id, {}).get("status") == "success":
            return release_id
    return ""


def rollback_target(state: HostState, to: str | None, host: str) -> str:
    """The release to go back to: `to`, or the one that served before `current`. Refuses
    (UsageError, saying why) unknown, current, failed and incomplete releases."""
    if not state.current:
        raise UsageError(f"{host}: nothing is deployed yet, there is nothing to roll back")
    records = fold(state.events)
    valid = [r for r in state.releases if r != state.current and records.get(r, {}).get("status") in COMPLETE]
    if to:
        if to == state.current:
            raise UsageError(f"{host}: {to} is already the current release")
        if to not in state.releases:
            raise UsageError(f"{host}: unknown release {to!r}; valid ids: {', '.join(valid) or '(none)'}")
        status = status_of(state, to)
        if status == "failed":
            why = " ".join(str(records[to].get("reason", "")).split())[:160]
            raise UsageError(f"{host}: release {to} failed to deploy ({why or 'see fab releases'}): refusing to go back "
                             f"to it; valid ids: {', '.join(valid) or '(none)'}")
        if status == "incomplete":
            raise UsageError(f"{host}: release {to} never finished deploying (the release log has no completed entry "
                             f"for it): refusing to go back to it; valid ids: {', '.join(valid) or '(none)'}")
        return to
    target = previous_served(state)
    if not target:
        raise UsageError(f"{host}: no earlier release that served is left to roll back to (current: {state.current})")
    return target


def releases_to_prune(state: HostState, keep: int) -> list[str]:
    """Failed and incomplete releases first, then completed ones beyond the newest `keep`;
    never `current` nor the release a rollback would go back to."""
    records = fold(state.events)
    complete = [r for r in state.releases if records.get(r, {}).get("status") in COMPLETE]
    kept = set(complete[-keep:]) | {state.current, previous_served(state)}
    return [r for r in state.releases if r not in kept]


def snapshots_to_prune(state: HostState, kept_releases: list[str], suffix: str, keep: int) -> list[str]:
    """Snapshot ids to delete: keep every snapshot of a kept release (the one taken before its
    migrations) and the newest `keep` others (e.g. from `fab backup-db`)."""
    ids = sorted(n[: -len(suffix)] for n in state.snapshots if n.endswith(suffix))
    others = [i for i in ids if i not in kept_releases]
    return others[:-keep] if keep else others


def append_cmd(layout: Layout, entry: dict[str, Any]) -> str:
    line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"mkdir -p {q(layout.meta)} && printf '%s\\n' {q(line)} >> {q(layout.log)}"
