"""The nginx upstream include file shipfab owns (`[apps.X.nginx]`), shared by every stack that
moves traffic between processes: instances drained one at a time (streamlit), a blue/green
flip or canary weights (compose).

The file holds one `upstream NAME { ... }` block. Publishing it is one command: the new text
arrives on stdin, is written beside the file and renamed over it, `nginx -t` runs, and on a
failed test the previous file is put back (nginx never reloads a config it refused); then
nginx reloads. The file before the change is printed back so the caller can register an undo
that restores exactly it.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..inventory import NginxSettings
from ..remote import Remote

q = shlex.quote

PREVIOUS_MARK = "@@shipfab:previous-upstream"
END_MARK = "@@shipfab:end-previous-upstream"


# `nginx -s reload` returns before the master has acted: until every old worker says "is shutting
# down", one of them may still take a new connection with the old upstream. Wait for that (10 s
# at most; a master we cannot find (no pid file) is not waited for).
WAIT_RELOADED = r"""i=0
while [ -n "$workers" ] && [ $i -lt 100 ]; do
  serving=""
  for p in $workers; do
    t=$(tr '\0' ' ' 2>/dev/null < /proc/$p/cmdline || true)
    case "$t" in *"shutting down"*) ;; *"worker process"*) serving=1 ;; esac
  done
  [ -z "$serving" ] && break
  i=$((i+1)); sleep 0.1
done
if [ $i -ge 100 ]; then echo "warning: nginx's old workers still serve 10 s after the reload" >&2; fi"""


def render(name: str, servers: Sequence[tuple[str, int]], keepalive: int = 16) -> str:
    """`upstream NAME { server ADDR weight=W; ... }`; weight 0 marks a server `down` (drained:
    nginx sends it no new request, requests in flight finish)."""
    if not servers:
        raise ValueError("an upstream needs at least one server")
    if all(weight == 0 for _, weight in servers):
        raise ValueError("an upstream needs at least one server with a weight above 0")
    lines = ["# written by shipfab: do not edit (fab restores it on the next deploy)", f"upstream {name} {{"]
    for addr, weight in servers:
        if weight < 0 or not addr or any(ch.isspace() or ch in ";{}#" for ch in addr):
            raise ValueError(f"not a server address and weight: {addr!r} {weight}")
        lines.append(f"    server {addr} down;" if weight == 0 else f"    server {addr} weight={weight} max_fails=0;")
    if keepalive:
        lines.append(f"    keepalive {keepalive};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def publish_cmd(nginx: NginxSettings) -> str:
    """Shell reading the new include from stdin: print the file as it was (after PREVIOUS_MARK),
    write + rename, `nginx -t` (else put the old file back, exit 1), reload."""
    path = q(nginx.upstream_file)
    tmp = q(nginx.upstream_file + ".shipfab-new")
    old = q(nginx.upstream_file + ".shipfab-old")
    return "\n".join([
        "set -e",
        f"echo {q(PREVIOUS_MARK)}",
        f"if [ -f {path} ]; then cat {path}; cp -p {path} {old}; else rm -f {old}; fi",
        f"echo; echo {q(END_MARK)}",
        f"cat > {tmp}",
        f"mv -f {tmp} {path}",
        f"if ! out=$({nginx.test} 2>&1); then",
        f"  if [ -f {old} ]; then mv -f {old} {path}; else rm -f {path}; fi",
        '  echo "nginx -t refused the new upstream: $out" >&2; exit 1',
        "fi",
        f"rm -f {old}",
        f"master=$(cat {q(nginx.pid_file)} 2>/dev/null || true)",
        'workers=""; if [ -n "$master" ]; then workers=$(pgrep -P "$master" | tr "\\n" " " || true); fi',
        nginx.reload,
        WAIT_RELOADED,
    ])


def previous_text(stdout: str) -> str:
    """The include file as it was before `publish_cmd` ran ("" when there was none)."""
    _, _, after = stdout.partition(PREVIOUS_MARK + "\n")
    text, _, _ = after.partition("\n" + END_MARK)
    return text


def publish(remote: Remote, nginx: NginxSettings, text: str) -> str:
    """Make `text` the live upstream (tested, reloaded); returns the file as it was before, for
    the caller's undo (publish that text back; "" means there was no file: remove it)."""
    return previous_text(remote.run(publish_cmd(nginx), stdin=text).stdout)


def remove_cmd(nginx: NginxSettings) -> str:
    """Undo of a first publish: no file before, so none after (then test + reload)."""
    return f"rm -f {q(nginx.upstream_file)} && {nginx.test} >/dev/null 2>&1 && {nginx.reload}"
