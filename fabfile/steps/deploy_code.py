"""deploy_code: a new release directory from a git ref, with the shared files linked in.

Built in `releases/.tmp-<id>` and renamed to `releases/<id>` only when complete, so a
release directory is never half a release (a killed deploy leaves a .tmp- that prune removes).
Two sources: a local checkout (packed once with `git archive`, streamed on the command's stdin) or a repository URL
the host can reach (kept as a bare mirror on the host and updated each deploy).
"""

from __future__ import annotations

import base64
import shlex
import subprocess
import threading

from ..errors import StepFailed, UsageError
from ..inventory import App
from ..layout import Layout
from ..release import Release
from ..remote import Remote

q = shlex.quote


def archive_spec(revision: str, subdir: str) -> str:
    """`rev` or `rev:subdir`: git archive packs only the app's folder, at the top."""
    return f"{revision}:{subdir}" if subdir else revision


def local_revision(checkout: str, ref: str) -> str:
    """The full commit id of `ref` in the local checkout."""
    res = subprocess.run(
        ["git", "-C", checkout, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True, text=True,
    )
    if res.returncode != 0:
        raise UsageError(f"git ref {ref!r} not found in {checkout}")
    return res.stdout.strip()


_packed: dict[tuple[str, str, str], str] = {}
_packing = threading.Lock()


def pack_local(checkout: str, revision: str, subdir: str) -> str:
    """git archive of the revision (only `subdir` when set), gzipped and base64-encoded (it
    travels on the command's stdin). Packed once per run: every host of a fleet gets the same."""
    key = (checkout, revision, subdir)
    with _packing:
        if key not in _packed:
            res = subprocess.run(["git", "-C", checkout, "archive", "--format=tar.gz", archive_spec(revision, subdir)],
                                 capture_output=True)
            if res.returncode != 0:
                raise StepFailed(f"git archive failed in {checkout}: {res.stderr.decode(errors='replace').strip()}")
            _packed[key] = base64.b64encode(res.stdout).decode("ascii")
        return _packed[key]


def mirror_update_cmd(layout: Layout, url: str, ref: str) -> str:
    """Clone or update the host's mirror, then print the full revision of `ref`."""
    m = q(layout.mirror)
    return (
        f"if [ -d {m} ]; then git -C {m} remote update --prune >/dev/null; "
        f"else git clone --quiet --mirror {q(url)} {m}; fi && "
        f"git -C {m} rev-parse --verify {q(ref + '^{commit}')}"
    )


def building(layout: Layout, release_id: str) -> str:
    """Where a release is built before it is renamed into place."""
    return f"{layout.releases}/.tmp-{release_id}"


def extract_cmd(layout: Layout, release_id: str) -> str:
    """Unpack the base64 tar.gz arriving on stdin into the build dir (a cut link: tar fails)."""
    tmp = q(building(layout, release_id))
    return f"set -o pipefail; rm -rf {tmp} && mkdir -p {tmp} && base64 -d | tar -xz -C {tmp}"


def mirror_extract_cmd(layout: Layout, release_id: str, revision: str, subdir: str) -> str:
    tmp = q(building(layout, release_id))
    return (f"rm -rf {tmp} && mkdir -p {tmp} && "
            f"git -C {q(layout.mirror)} archive {q(archive_spec(revision, subdir))} | tar -x -C {tmp}")


def publish_cmd(layout: Layout, release_id: str) -> str:
    """The complete release takes its name (rename within releases/: atomic)."""
    return f"mv -T {q(building(layout, release_id))} {q(layout.release(release_id))}"


def remove_cmd(layout: Layout, release_id: str) -> str:
    """Undo: remove the release (and its build dir and upload), unless `current` points at it."""
    rel, tmp = q(layout.release(release_id)), q(building(layout, release_id))
    return (f"if [ \"$(readlink {q(layout.current)})\" = {q('releases/' + release_id)} ]; then echo KEPT; "
            f"else rm -rf -- {rel} {tmp} && echo REMOVED; fi")


def link_shared_cmd(layout: Layout, release_id: str, revision: str, files: tuple[str, ...], dirs: tuple[str, ...]) -> str:
    """Record REVISION and link shared dirs/files into the release being built (a missing
    shared file is created 0600)."""
    rel = building(layout, release_id)
    parts = [f"printf '%s\\n' {q(revision)} > {q(rel + '/REVISION')}"]
    for d in dirs:
        src, dst = f"{layout.shared}/{d}", f"{rel}/{d}"
        parts.append(f"mkdir -p {q(src)} && rm -rf {q(dst)} && mkdir -p \"$(dirname {q(dst)})\" && ln -s {q(src)} {q(dst)}")
    for f in files:
        src, dst = f"{layout.shared}/{f}", f"{rel}/{f}"
        parts.append(
            f"mkdir -p \"$(dirname {q(src)})\" && {{ [ -e {q(src)} ] || (umask 077 && : > {q(src)}); }} && "
            f"rm -rf {q(dst)} && mkdir -p \"$(dirname {q(dst)})\" && ln -s {q(src)} {q(dst)}"
        )
    return " && ".join(parts)


def deploy_code(remote: Remote, app: App, layout: Layout, release: Release) -> None:
    """Create releases/<id> from the ref; record the full revision in the Release."""
    if app.repo:
        out = remote.run(mirror_update_cmd(layout, app.repo, release.ref)).stdout.split()
        if not out and not remote.dry_run:
            raise StepFailed(f"{remote.host}: could not resolve {release.ref!r} in {app.repo}")
        release.revision = out[-1] if out else "(resolved on the host)"
        create = mirror_extract_cmd(layout, release.id, release.revision, app.subdir)
        remote.run(create + " && " + _link(app, layout, release) + " && " + publish_cmd(layout, release.id))
        return
    release.revision = release.revision or local_revision(app.checkout, release.ref)  # a fleet resolved it once
    archive = pack_local(app.checkout, release.revision, app.subdir)
    remote.run(extract_cmd(layout, release.id) + " && " + _link(app, layout, release) + " && "
               + publish_cmd(layout, release.id), stdin=archive, show_output=False)


def _link(app: App, layout: Layout, release: Release) -> str:
    return link_shared_cmd(layout, release.id, release.revision, app.shared_files, app.shared_dirs)
