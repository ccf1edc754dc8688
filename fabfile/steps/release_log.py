"""The release log: .shipfab/releases.jsonl, append-only, one JSON object per event.

Events about the same release are folded (later fields win), so a deploy writes one
line and a later rollback adds `status: rolled_back` for the release it left.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ..layout import Layout
from ..remote import Remote

q = shlex.quote


def append_cmd(layout: Layout, entry: dict[str, Any]) -> str:
    line = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return f"mkdir -p {q(layout.meta)} && printf '%s\\n' {q(line)} >> {q(layout.log)}"


def read_cmd(layout: Layout) -> str:
    return f"cat {q(layout.log)} 2>/dev/null || true"


def fold(text: str) -> list[dict[str, Any]]:
    """One record per release id, oldest first; unreadable lines are skipped."""
    records: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("release"):
            records.setdefault(event["release"], {}).update(event)
    return [records[k] for k in sorted(records)]


def read_log(remote: Remote, layout: Layout) -> list[dict[str, Any]]:
    return fold(remote.run(read_cmd(layout), change=False).stdout)


def append(remote: Remote, layout: Layout, entry: dict[str, Any]) -> None:
    """Append one event; known secret values are masked in what is written too."""
    masked = json.loads(remote.printer.redact(json.dumps(entry)))
    remote.run(append_cmd(layout, masked))
