"""pip_sync: the release's virtualenv, keyed by a hash of requirements + python version
(+ wheelhouse, + the app's `extra_requirements`, installed after requirements.txt: the
server pieces an app's own requirements lack, such as gunicorn).

A venv is built in its own directory `venvs/<hash>.build-<release>` and becomes
`venvs/<hash>` (a symlink, swapped in atomically with `mv -T`) only once pip finished: a
build cut short never counts as complete, and the next deploy builds again. A deploy whose
requirements did not change finds `venvs/<hash>` and only links it: pip does not run.
(Building under its final name keeps the scripts' `#!` lines valid; a renamed venv breaks them.)
"""

from __future__ import annotations

import shlex

from ..inventory import App
from ..layout import Layout
from ..output import LineStream
from ..release import Release
from ..remote import Remote

q = shlex.quote


def sync_script(layout: Layout, release_id: str, python: str, wheelhouse: str, extra: tuple[str, ...] = (),
                version: str = "") -> str:
    """One round trip: hash, reuse-or-build, link `<release>/.venv`. pip's output goes to
    stdout (streamed with -v); `extra` joins the hash only when there is any (old venvs stay valid).
    `version`: `python`'s sys.version as the pre-flight facts read it (its line in the hash
    without starting python again); "" asks python."""
    rel = layout.release(release_id)
    req = q(f"{rel}/requirements.txt")
    index = f"--no-index --find-links {q(wheelhouse)} " if wheelhouse else ""
    py = q(python)
    pip = f'"$b/bin/pip" install --disable-pip-version-check {index}'
    extras = " ".join(map(q, extra))
    # python -I -S: no site import (faster), the same sys.version, so the same hash
    sys_version = f"printf '%s\\n' {q(version)}" if version else f"{py} -I -S -c 'import sys; print(sys.version)'"
    return "\n".join([
        f"h=$({{ cat {req} 2>/dev/null; {sys_version}; echo {q(wheelhouse)};"
        f"{f' echo extra {q(extras)};' if extra else ''} }} | sha256sum | cut -c1-16) || exit 1",
        f"v={q(layout.venvs)}/$h; b=$v.build-{q(release_id)}",
        # a venv of shipfab < 2 is a directory with a completion marker
        'if { [ -L "$v" ] && [ -e "$v/bin/python" ]; } || [ -f "$v/.shipfab-complete" ]; then echo "REUSED $h"',
        "else",
        f'  rm -rf "$b" && mkdir -p {q(layout.venvs)} && {py} -m venv "$b" &&',
        f'  {{ [ ! -f {req} ] || {pip}-r {req}; }} &&',
        *([f"  {pip}{extras} &&"] if extra else []),
        '  ln -sfn "$(basename "$b")" "$v.tmp" && rm -rf "$v" && mv -T "$v.tmp" "$v" ||',
        '  { rc=$?; rm -rf "$b" "$v.tmp"; echo "venv build failed (exit $rc)" >&2; exit $rc; }',
        '  echo "BUILT $h"',
        "fi",
        f'ln -sfn "$v" {q(rel + "/.venv")}',
    ])


def cleanup_cmd(layout: Layout, release_id: str) -> str:
    """Undo: remove this release's venv build if no `venvs/<hash>` link took it (an interrupted build)."""
    return (f"cd {q(layout.venvs)} 2>/dev/null || exit 0; for b in *.build-{q(release_id)}; do "
            '[ -e "$b" ] || continue; [ "$(readlink "${b%.build-*}" 2>/dev/null)" = "$b" ] || rm -rf -- "$b"; done')


def parse_sync(stdout: str) -> tuple[str, bool]:
    """(venv hash, was it built now?)"""
    for line in stdout.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word in ("REUSED", "BUILT"):
            return rest.strip(), word == "BUILT"
    return "", False


def pip_sync(remote: Remote, app: App, layout: Layout, release: Release, python_version: str = "") -> str:
    """Make sure the release has its venv; returns 'reused' or 'built'. With -v pip's lines
    stream as they come, prefixed with the host. `python_version`: see sync_script."""
    stream = LineStream(lambda line: remote.printer.line(line, remote.host, level=2))
    script = sync_script(layout, release.id, app.python, app.wheelhouse, app.extra_requirements, python_version)
    out = remote.run(script, show_output=False, out_stream=stream).stdout
    stream.close()
    if remote.dry_run:
        return "dry-run"
    release.venv_hash, built = parse_sync(out)
    return "built" if built else "reused"
