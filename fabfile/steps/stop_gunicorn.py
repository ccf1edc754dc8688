"""stop: the app's gunicorn stops, under its manager (the sandbox's way to be shut down).

pidfile: TERM to the master named by the pidfile (only if that process is a gunicorn
started with this pidfile: a stale pidfile never signals a stranger), then wait until it is
gone; supervisor / systemd: their own stop. Prints STOPPED <pid> or NOT_RUNNING.
"""

from __future__ import annotations

import shlex

from ..inventory import App
from ..layout import Layout
from ..remote import Remote

q = shlex.quote


def stop_cmd(app: App, layout: Layout) -> str:
    """The shell command that stops the app's gunicorn and says what it found."""
    g = app.gunicorn
    sudo = "sudo -n " if g.sudo else ""
    if g.manager == "supervisor":
        conf = f" -c {q(g.supervisor_conf)}" if g.supervisor_conf else ""
        return f"{sudo}supervisorctl{conf} stop {q(g.program)} && echo STOPPED {q(g.program)}"
    if g.manager == "systemd":
        return f"{sudo}systemctl stop {q(g.program)} && echo STOPPED {q(g.program)}"
    pidfile = q(layout.pidfile)
    ticks = int(g.timeout * 10) + 50  # gunicorn's graceful timeout, then a margin
    return "\n".join([
        f'pid=$(cat {pidfile} 2>/dev/null); case "$pid" in ""|*[!0-9]*) pid=;; esac',
        r'''if [ -z "$pid" ] || ! tr '\0' ' ' < /proc/$pid/cmdline 2>/dev/null | grep -qF -- '''
        + q(layout.pidfile) + '; then echo NOT_RUNNING; exit 0; fi',
        'kill -TERM "$pid"; i=0',
        f'while kill -0 "$pid" 2>/dev/null; do i=$((i+1)); if [ $i -ge {ticks} ]; then',
        '  echo "gunicorn (pid $pid) did not stop after TERM" >&2; exit 1; fi; sleep 0.1; done',
        'echo "STOPPED $pid"',
    ])


def stop(remote: Remote, app: App, layout: Layout) -> str:
    """Stop the app's gunicorn; a short detail of what happened."""
    out = remote.run(stop_cmd(app, layout)).stdout.strip()
    if remote.dry_run:
        return "dry-run"
    if out.endswith("NOT_RUNNING"):
        return "gunicorn was not running"
    return f"gunicorn stopped ({out.rsplit(' ', 1)[-1]}); `fab -H {remote.host} restart` starts it again"
