"""What the process managers (gunicorn, streamlit, workers) share: the command that drives
supervisor or systemd, and the shell function telling a live process from a gone one."""

from __future__ import annotations

import shlex

# `alive PID`: the process exists and is no zombie (an empty PID is not alive).
ALIVE = "alive() { [ -n \"$1\" ] && [ -d /proc/$1 ] && ! grep -q '^State:[[:space:]]*Z' /proc/$1/status 2>/dev/null; }"


def ctl(manager: str, sudo: bool, supervisor_conf: str) -> str:
    """`supervisorctl [-c CONF]` or `systemctl`, through `sudo -n` when asked."""
    prefix = "sudo -n " if sudo else ""
    if manager == "supervisor":
        conf = f" -c {shlex.quote(supervisor_conf)}" if supervisor_conf else ""
        return f"{prefix}supervisorctl{conf}"
    return f"{prefix}systemctl"
