"""pip_sync: the release's virtualenv, keyed by a hash of requirements + python version.

A deploy whose requirements did not change finds the venv complete and only links it:
pip does not run at all. A half-built venv (a build that died) has no completion
marker, so the next deploy removes and rebuilds it.
"""

from __future__ import annotations

import shlex

from ..inventory import App
from ..layout import Layout
from ..release import Release
from ..remote import Remote

q = shlex.quote
MARKER = ".shipfab-complete"


def sync_script(layout: Layout, release_id: str, python: str, wheelhouse: str) -> str:
    """One round trip: hash, reuse-or-build, link `<release>/.venv`."""
    rel = layout.release(release_id)
    req = q(f"{rel}/requirements.txt")
    index = f"--no-index --find-links {q(wheelhouse)} " if wheelhouse else ""
    py = q(python)
    return (
        f"h=$({{ cat {req} 2>/dev/null; {py} -c 'import sys; print(sys.version)'; echo {q(wheelhouse)}; }}"
        f" | sha256sum | cut -c1-16) && v={q(layout.venvs)}/$h && "
        f'if [ -f "$v/{MARKER}" ]; then echo "REUSED $h"; else '
        f'{{ rm -rf "$v" && mkdir -p {q(layout.venvs)} && {py} -m venv "$v" && '
        f'{{ [ ! -f {req} ] || "$v/bin/pip" install --disable-pip-version-check -q {index}-r {req}; }} && '
        f'touch "$v/{MARKER}"; }} || {{ rc=$?; rm -rf "$v"; echo "venv build failed (exit $rc)" >&2; exit $rc; }}; '
        f'echo "BUILT $h"; fi && ln -sfn "$v" {q(rel + "/.venv")}'
    )


def parse_sync(stdout: str) -> tuple[str, bool]:
    """(venv hash, was it built now?)"""
    for line in stdout.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word in ("REUSED", "BUILT"):
            return rest.strip(), word == "BUILT"
    return "", False


def pip_sync(remote: Remote, app: App, layout: Layout, release: Release) -> str:
    """Make sure the release has its venv; returns 'reused' or 'built'."""
    out = remote.run(sync_script(layout, release.id, app.python, app.wheelhouse)).stdout
    if remote.dry_run:
        return "dry-run"
    release.venv_hash, built = parse_sync(out)
    return "built" if built else "reused"
