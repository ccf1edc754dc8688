"""Deploy lock: `mkdir` is atomic, so two deploys can never both hold it."""

from __future__ import annotations

import json
import os
import shlex
import time

from ..errors import LockHeld
from ..layout import Layout
from ..release import who
from ..remote import Remote

q = shlex.quote


def owner_record(ref: str, now: float | None = None) -> dict[str, object]:
    user_host = who()
    return {
        "user": user_host.split("@")[0],
        "controller": user_host.split("@", 1)[1],
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "ref": ref,
    }


def acquire_cmd(layout: Layout, owner: dict[str, object]) -> str:
    owner_file = f"{layout.lock}/owner.json"
    return (
        f"mkdir -p {q(layout.meta)} && if mkdir {q(layout.lock)} 2>/dev/null; "
        f"then printf '%s\\n' {q(json.dumps(owner, sort_keys=True))} > {q(owner_file)} && echo ACQUIRED; "
        f"else echo HELD; cat {q(owner_file)} 2>/dev/null; fi"
    )


def show_cmd(layout: Layout) -> str:
    return f"if [ -d {q(layout.lock)} ]; then echo HELD; cat {q(layout.lock + '/owner.json')} 2>/dev/null; else echo FREE; fi"


def release_cmd(layout: Layout) -> str:
    return f"rm -rf {q(layout.lock)}"


def describe_holder(text: str) -> str:
    """'alice@ci-runner (pid 4242) since 2026-11-23T10:15:00Z, deploying v1.4' from owner.json."""
    try:
        o = json.loads(text)
    except ValueError:
        return "an unknown holder (owner.json missing or unreadable)"
    return f"{o.get('user')}@{o.get('controller')} (pid {o.get('pid')}) since {o.get('since')}, deploying {o.get('ref')!r}"


def held_message(host: str, holder: str) -> str:
    """What a deploy that finds the lock taken says (the lock step and the pre-flight alike)."""
    return f"{host}: deploy lock is held by {holder}. If that deploy is dead, run: fab -H {host} unlock"


def acquire(remote: Remote, layout: Layout, ref: str) -> None:
    """Take the deploy lock or fail fast with the holder's details."""
    out = remote.run(acquire_cmd(layout, owner_record(ref))).stdout.strip()
    if out.startswith("HELD"):
        raise LockHeld(held_message(remote.host, describe_holder(out[len("HELD"):].strip())))


def holder(remote: Remote, layout: Layout) -> str | None:
    """Who holds the lock, or None when it is free (read-only: runs under --dry-run too)."""
    out = remote.run(show_cmd(layout), change=False).stdout.strip()
    return describe_holder(out[len("HELD"):].strip()) if out.startswith("HELD") else None


def release(remote: Remote, layout: Layout) -> None:
    remote.run(release_cmd(layout))
