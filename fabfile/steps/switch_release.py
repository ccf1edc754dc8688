"""switch_release: point `current` at a release atomically (symlink to a temp name, then mv -T),
and its undo, decided from where `current` points on the host when the undo runs."""

from __future__ import annotations

import shlex

from ..layout import Layout
from ..remote import Remote

q = shlex.quote


def switch_cmd(layout: Layout, release_id: str) -> str:
    tmp = f"{layout.current}.tmp-{release_id}"
    return f"ln -sfn {q('releases/' + release_id)} {q(tmp)} && mv -T {q(tmp)} {q(layout.current)}"


def switch_back_cmd(layout: Layout, left: str, back_to: str) -> str:
    """Point `current` back at `back_to` only if it points at `left` (prints SWITCHED_BACK or NOT_SWITCHED)."""
    return (f"rm -f {q(layout.current + '.tmp-' + left)}; "
            f"if [ \"$(readlink {q(layout.current)})\" = {q('releases/' + left)} ]; then "
            f"{switch_cmd(layout, back_to)} && echo SWITCHED_BACK; else echo NOT_SWITCHED; fi")


def switch_release(remote: Remote, layout: Layout, release_id: str) -> None:
    remote.run(switch_cmd(layout, release_id))


def switch_back(remote: Remote, layout: Layout, left: str, back_to: str) -> bool:
    """Undo a switch to `left`; True when `current` was moved back to `back_to`."""
    return "SWITCHED_BACK" in remote.run(switch_back_cmd(layout, left, back_to)).stdout
