"""switch_release: point `current` at a release atomically (symlink to a temp name, then mv -T)."""

from __future__ import annotations

import shlex

from ..layout import Layout
from ..remote import Remote

q = shlex.quote


def switch_cmd(layout: Layout, release_id: str) -> str:
    tmp = f"{layout.current}.tmp-{release_id}"
    return f"ln -sfn {q('releases/' + release_id)} {q(tmp)} && mv -T {q(tmp)} {q(layout.current)}"


def switch_release(remote: Remote, layout: Layout, release_id: str) -> None:
    remote.run(switch_cmd(layout, release_id))
