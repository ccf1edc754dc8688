"""The host's state, read in one round trip: under the deploy lock for a run that changes
things (take the lock, then read `current`, the release directories, the release log, the
snapshot files, the shared .env and the pre-flight facts), read-only otherwise.

The lock is `mkdir .shipfab/lock` (atomic) plus owner.json written to a temp name and
renamed in the same command; a lock whose owner.json cannot be written (a full disk) is
removed again at once, so a failed attempt never leaves a lock behind.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ..context import HostState
from ..layout import Layout
from ..remote import Remote
from ..secret_rule import parse_env

q = shlex.quote
MARK = "@@shipfab:"  # section marker at the start of a line


def _section(name: str) -> str:
    return f"echo {MARK}{name}"


def lock_cmd(layout: Layout, owner: dict[str, object]) -> str:
    """Take the lock: prints `LOCK ACQUIRED`, `LOCK HELD` + owner.json, `LOCK BUSY` or `LOCK FAILED why` (and exits).
    From before the `mkdir` until owner.json is in place it holds the flock of `.shipfab/` (see
    `meta_flock`): a check after a dropped link waits for this script, orphaned, to finish."""
    lock, owner_file = q(layout.lock), q(layout.lock + "/owner.json")
    return "\n".join([
        f"mkdir -p {q(layout.meta)} || {{ echo {q('LOCK FAILED cannot create ' + layout.meta)}; exit 0; }}",
        f"{meta_flock(layout)} || {{ echo 'LOCK BUSY'; exit 0; }}",
        f"if mkdir {lock} 2>/dev/null; then",
        f"  if printf '%s\\n' {q(json.dumps(owner, sort_keys=True))} > {owner_file}.tmp 2>/dev/null"
        f" && mv -f {owner_file}.tmp {owner_file}; then echo 'LOCK ACQUIRED'",
        f"  else rm -rf {lock}; echo 'LOCK FAILED cannot write the lock owner file (disk full?)'; exit 0; fi",
        f"else echo 'LOCK HELD'; tr -d '\\n' < {owner_file} 2>/dev/null; echo; exit 0; fi",
        "exec 9<&-",  # the flock ends here: the state is read without it
    ])


META_WAIT = 30  # seconds a lock script waits for another one taking or releasing the lock


def meta_flock(layout: Layout) -> str:
    """Hold the flock of the `.shipfab/` directory on fd 9 until the script ends or closes fd 9.
    Taking the lock (mkdir + owner.json) and a release (token check + removal) each hold it, so
    neither ever sees the other half done; an orphan of a dropped link holds it until it ends."""
    return f"exec 9< {q(layout.meta)} && flock -w {META_WAIT} 9"


def state_cmd(layout: Layout, facts: str = "") -> str:
    """Read-only: every section the state is made of (and the pre-flight facts, when given)."""
    lines = [
        _section("current"), f"readlink {q(layout.current)} 2>/dev/null",
        _section("releases"), f"ls -1 {q(layout.releases)} 2>/dev/null",
        _section("snapshots"), f"ls -1 {q(layout.backups)} 2>/dev/null",
        _section("log"), f"cat {q(layout.log)} 2>/dev/null",
        _section("env"), f"cat {q(layout.shared + '/.env')} 2>/dev/null; echo",
        _section("lock"), f"tr -d '\\n' < {q(layout.lock + '/owner.json')} 2>/dev/null || "
                          f"{{ [ -d {q(layout.lock)} ] && echo '{{}}'; }}; echo",
    ]
    if facts:
        lines += [_section("facts"), facts]
    return "\n".join(lines + [_section("end"), "true"])


def sections(stdout: str) -> dict[str, str]:
    """Split the output at the section markers: name -> text."""
    out: dict[str, list[str]] = {"head": []}
    name = "head"
    for line in stdout.splitlines():
        if line.startswith(MARK):
            name = line[len(MARK):].strip()
            out[name] = []
        else:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def parse_events(text: str) -> tuple[dict[str, Any], ...]:
    """The release log's events, oldest first; unreadable lines (a torn write) are skipped."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("release"), str) and event["release"]:
            events.append(event)
    return tuple(events)


def parse_state(parts: dict[str, str], where: str) -> HostState:
    link = parts.get("current", "").strip()
    names = [n.strip() for n in parts.get("releases", "").splitlines() if n.strip()]
    return HostState(
        current=link.rstrip("/").rsplit("/", 1)[-1] if link else "",
        releases=tuple(sorted(n for n in names if not n.startswith("."))),
        events=parse_events(parts.get("log", "")),
        snapshots=tuple(sorted(n.strip() for n in parts.get("snapshots", "").splitlines() if n.strip())),
        env=parse_env(parts.get("env", ""), where),
    )


def lock_holder(parts: dict[str, str]) -> str | None:
    """owner.json of a held lock ("{}" when it has none), None when the lock is free."""
    text = parts.get("lock", "").strip()
    return text or None


def read_state(remote: Remote, layout: Layout, facts: str = "") -> tuple[HostState, dict[str, str]]:
    """Read the state without the lock (dry runs, `check`, `releases`): (state, every section).
    The .env values join the redaction filter before anything else is printed."""
    parts = sections(remote.run(state_cmd(layout, facts), change=False, show_output=False).stdout)
    state = parse_state(parts, f"{remote.host}:{layout.shared}/.env")
    remote.printer.redact.add_env(state.env, remote.target.app)
    return state, parts
