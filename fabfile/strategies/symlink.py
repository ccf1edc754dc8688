"""The symlink strategy: releases/<id> built from a git ref, a venv keyed by hash, and
`current` switched atomically. Each step registers its undo before it changes anything;
every undo decides from the host as it finds it then.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable

from ..context import HostRun
from ..errors import ManualAction
from ..steps import deploy_code as code
from ..steps import pip_sync as venv
from ..steps.switch_release import switch_back, switch_release

q = shlex.quote


def deploy_code(run: HostRun) -> str:
    """Step: the release directory (built under .tmp-<id>, renamed when complete)."""
    release = run.release
    run.on_undo("remove_release", lambda: _remove(run, release.id))
    code.deploy_code(run.remote, run.app, run.layout, release)
    return release.revision[:12]


def _remove(run: HostRun, release_id: str) -> str:
    out = run.remote.run(code.remove_cmd(run.layout, release_id)).stdout
    return f"kept {release_id}: current points at it" if "KEPT" in out else f"removed {release_id}"


def pip_sync(run: HostRun) -> str:
    """Step: the venv for the release's requirements (reused when they did not change)."""
    run.on_undo("venv_build", lambda: _cleanup_venv(run))
    return venv.pip_sync(run.remote, run.app, run.layout, run.release, run.python_version)


def _cleanup_venv(run: HostRun) -> None:
    run.remote.run(venv.cleanup_cmd(run.layout, run.release.id))


def switch(run: HostRun, activate: Callable[[HostRun, str], str | None]) -> str:
    """Step: `current` -> the new release. Its undo points `current` back at the release that
    was current before (if it still points at the new one) and makes that one serve again."""
    release = run.release
    previous = run.state.current

    def undo() -> str:
        if not previous:
            if run.remote.run(f"readlink {q(run.layout.current)} || true", change=False).stdout.strip() \
                    == f"releases/{release.id}":
                raise ManualAction(f"{release.id} was the first release on {run.host}: there is nothing to switch "
                                   "back to, it stays current; fix the app and deploy again")
            return "nothing was switched"
        if not switch_back(run.remote, run.layout, release.id, previous):
            return f"current did not point at {release.id}: nothing to switch back"
        detail = activate(run, previous)
        return f"current -> {previous} again, serving ({detail})"

    run.on_undo("switch_back", undo)
    switch_release(run.remote, run.layout, release.id)
    release.switched = True
    return f"current -> {release.id}"
