"""Deploy lock: `mkdir` is atomic, so two deploys can never both hold it. Taking it also
reads the host's state in the same round trip (steps/host_state.py): nothing about the
host is decided from what was read before the lock.

owner.json carries a random token: releasing (or checking, after a dropped link) only
ever touches the lock this run took, never one another run took meanwhile.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time

from ..context import HostState
from ..errors import LockHeld, StepFailed
from ..layout import Layout
from ..release import who
from ..remote import Remote
from .host_state import META_WAIT, lock_cmd, meta_flock, parse_state, sections, state_cmd

q = shlex.quote


def owner_record(ref: str, now: float | None = None) -> dict[str, object]:
    user_host = who()
    return {
        "user": user_host.split("@")[0],
        "controller": user_host.split("@", 1)[1],
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "ref": ref,
        "token": os.urandom(8).hex(),
    }


def release_cmd(layout: Layout, token: str = "") -> str:
    """Remove the lock; with `token`, only when owner.json still carries it (prints RELEASED / NOT_OURS / FREE),
    checked and removed under the flock of `.shipfab/`: a lock script orphaned by a dropped link ends first."""
    lock = q(layout.lock)
    if not token:
        return f"if [ -d {lock} ]; then rm -rf {lock} && echo RELEASED; else echo FREE; fi"
    return (f"if [ -d {q(layout.meta)} ]; then {meta_flock(layout)}; fi\n"
            f"if [ ! -d {lock} ]; then echo FREE; elif grep -q {q(token)} {q(layout.lock + '/owner.json')} 2>/dev/null; "
            f"then rm -rf {lock} && echo RELEASED; else echo NOT_OURS; fi\nexec 9<&-")


def pid_note(owner: dict[str, object], this_controller: str | None = None) -> str:
    """On the same controller, say whether the holder's pid still runs (a stale lock after a SIGKILL)."""
    here = this_controller or socket.gethostname()
    pid = owner.get("pid")
    if owner.get("controller") != here or not isinstance(pid, int):
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"; pid {pid} is not running on this controller: the lock is stale"
    except PermissionError:
        pass
    return f"; pid {pid} is still running here"


def describe_holder(text: str) -> str:
    """'alice@ci-runner (pid 4242) since 2026-11-23T10:15:00Z, deploying v1.4; pid 4242 is not running...'"""
    try:
        o = json.loads(text)
        if not isinstance(o, dict) or not o:
            raise ValueError
    except ValueError:
        return "an unknown holder (owner.json missing or unreadable)"
    return (f"{o.get('user')}@{o.get('controller')} (pid {o.get('pid')}) since {o.get('since')}, "
            f"deploying {o.get('ref')!r}{pid_note(o)}")


def held_message(host: str, holder: str) -> str:
    """What a run that finds the lock taken says."""
    return f"{host}: deploy lock is held by {holder}. If that deploy is dead, run: fab -H {host} unlock"


def acquire_and_read(remote: Remote, layout: Layout, owner: dict[str, object], facts: str = "") -> tuple[HostState, str]:
    """Take the lock and read the state (and the pre-flight facts) in one round trip:
    (state, facts output). LockHeld when another run has it; StepFailed when it cannot be taken."""
    script = lock_cmd(layout, owner) + "\n" + state_cmd(layout, facts)
    parts = sections(remote.run(script, show_output=False).stdout)
    status = parts.get("head", "").strip()
    if status.startswith("LOCK HELD"):
        raise LockHeld(held_message(remote.host, describe_holder(status[len("LOCK HELD"):].strip())))
    if status.startswith("LOCK BUSY"):
        raise LockHeld(f"{remote.host}: another run was taking or releasing the deploy lock for {META_WAIT} s "
                       f"({layout.meta} stayed flock'ed); try again")
    if not status.startswith("LOCK ACQUIRED"):
        raise StepFailed(f"{remote.host}: could not take the deploy lock: {status.removeprefix('LOCK FAILED ') or 'no answer'}")
    state = parse_state(parts, f"{remote.host}:{layout.shared}/.env")
    remote.printer.redact.add_env(state.env, remote.target.app)
    return state, parts.get("facts", "")


def release(remote: Remote, layout: Layout, token: str = "") -> str:
    """Release the lock (only ours when `token` is given); returns RELEASED, NOT_OURS or FREE."""
    return remote.run(release_cmd(layout, token), serialize=False).stdout.strip() or "FREE"


def holder(remote: Remote, layout: Layout) -> str | None:
    """Who holds the lock, or None when it is free (read-only)."""
    out = remote.run(f"if [ -d {q(layout.lock)} ]; then echo HELD; cat {q(layout.lock + '/owner.json')} 2>/dev/null; "
                     "else echo FREE; fi", change=False).stdout.strip()
    return describe_holder(out[len("HELD"):].strip()) if out.startswith("HELD") else None
