"""The state of one deploy as it moves through the steps, and release ids."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

ID_FORMAT = "%Y%m%dT%H%M%SZ"


def new_release_id(existing: list[str], now: datetime | None = None) -> str:
    """A UTC timestamp id, strictly newer than every existing release (ids sort by time)."""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    newest = max(existing, default="")
    while moment.strftime(ID_FORMAT) <= newest:
        moment += timedelta(seconds=1)
    return moment.strftime(ID_FORMAT)


def who() -> str:
    """user@controller, recorded in the lock and the release log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass
class Release:
    """What one deploy knows about the release it is making, filled in step by step."""

    id: str
    ref: str
    revision: str = ""
    previous: str = ""  # the release that was current when the deploy started
    venv_hash: str = ""
    switched: bool = False
    backup: str = ""  # the database snapshot taken before this release's migrations
    backup_at: float = 0.0  # when that snapshot's view of the database was taken (the host's clock, epoch s)
    migrated: bool = False  # a migration was applied: the schema fingerprint changed (on this host)
    timings: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # a stack's facts for the log entry (streamlit: state before/after)
