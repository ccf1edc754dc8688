"""prune: remove releases the release log says can go (steps/release_log.py decides),
leftover build directories, venvs no remaining release uses, and old snapshots.
Runs under the lock and the busy flock, so no build is in progress."""

from __future__ import annotations

import shlex

from ..layout import Layout

q = shlex.quote

# In venvs/: a `<hash>` link no release uses goes with its build dir; a `<hash>.build-<id>`
# no link points at is an interrupted build.
VENVS_SCRIPT = """\
used=" "; for l in {releases}/*/.venv; do [ -L "$l" ] && used="$used$(basename "$(readlink "$l")") "; done
cd {venvs} 2>/dev/null || exit 0
for v in *; do
  [ -e "$v" ] || [ -L "$v" ] || continue
  case "$v" in
    *.tmp) rm -f -- "$v"; continue;;
    *.build-*) [ "$(readlink "${{v%.build-*}}" 2>/dev/null)" = "$v" ] || rm -rf -- "$v"; continue;;
  esac
  case "$used" in *" $v "*) ;; *) t=$(readlink "$v"); rm -rf -- "$v"; [ -z "$t" ] || rm -rf -- "$t";; esac
done"""


def prune_cmd(layout: Layout, releases: list[str], snapshot_files: list[str]) -> str:
    """rm the doomed releases and snapshot files (with their .ok), build leftovers, unused venvs."""
    doomed = [q(layout.release(r)) for r in releases] + [f"{q(layout.backups + '/' + f)} {q(layout.backups + '/' + f + '.ok')}"
                                                          for f in snapshot_files]
    lines = [f"rm -rf -- {' '.join(doomed)}"] if doomed else []
    lines += [f"rm -rf -- {q(layout.releases)}/.tmp-*",
              f"rm -f -- {q(layout.backups)}/*.partial {q(layout.backups)}/*.err {q(layout.backups)}/*.toc",
              f"( {VENVS_SCRIPT.format(releases=q(layout.releases), venvs=q(layout.venvs))} )"]
    return "\n".join(lines)
