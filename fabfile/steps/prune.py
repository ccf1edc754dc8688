"""prune: remove releases beyond keep_releases (never current nor previous) and the
venvs no remaining release uses."""

from __future__ import annotations

import shlex

from ..layout import Layout
from ..remote import Remote
from .host_state import HostState

q = shlex.quote


def releases_to_prune(state: HostState, keep: int) -> list[str]:
    keep_set = set(state.releases[-keep:]) | {state.current, state.previous_of(state.current)}
    return [r for r in state.releases if r not in keep_set]


def prune_cmd(layout: Layout, doomed: list[str]) -> str:
    """rm the doomed releases, then every venv that no remaining release links to."""
    rm = f"rm -rf -- {' '.join(q(layout.release(r)) for r in doomed)} && " if doomed else ""
    return (
        f"{rm}if [ -d {q(layout.venvs)} ]; then cd {q(layout.venvs)} && for v in *; do "
        f'[ -e "$v" ] || continue; used=; for l in {q(layout.releases)}/*/.venv; do '
        f'[ "$(basename "$(readlink "$l")")" = "$v" ] && used=1; done; '
        f'[ -n "$used" ] || rm -rf -- "$v"; done; fi'
    )


def prune(remote: Remote, layout: Layout, state: HostState, keep: int) -> list[str]:
    doomed = releases_to_prune(state, keep)
    remote.run(prune_cmd(layout, doomed))
    return doomed
