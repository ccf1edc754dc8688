"""Tasks of the streamlit stack: `watch` (the watch window alone) and the `streamlit.*`
namespace (status, restart, stop, command); `notes` is the release log's short form."""

from __future__ import annotations

from typing import Any

from fabric import task
from invoke import Collection

from .cli import known_release, on_each_host, options_for, printer_for
from .context import HostRun, Options
from .errors import UsageError
from .managers import streamlit as manager
from .output import table
from .release import Release
from .stacks import streamlit as stack


def _streamlit(run: HostRun) -> manager.StreamlitSettings:
    if run.app.streamlit is None:
        raise UsageError(f"{run.host}: app {run.app.name} is not a streamlit app (stack = {run.app.stack!r})")
    return run.app.streamlit


def notes(record: dict[str, Any]) -> str:
    """The release log entry's kind, message and recorded state, short (for `fab releases`)."""
    parts = [f"[{record['kind']}]" if record.get("kind") else "", str(record.get("message") or "")[:60]]
    state = record.get("state_after") or record.get("state_before")
    if isinstance(state, dict):
        parts.append(("after: " if "state_after" in record else "before: ") + stack.short_state(state))
    return " ".join(p for p in parts if p)


@task(help={"seconds": "length of the window (default: [apps.X.watch] seconds)", "verbose": "show every command"})
def watch(c, seconds=None, verbose=False):
    """Watch every streamlit instance's CPU and memory for a window; exit 1 naming a breach."""
    printer, options = options_for(False, verbose, False)

    def step(run: HostRun) -> str:
        _streamlit(run)
        return stack.watch_step(run, float(seconds) if seconds is not None else None)

    on_each_host(c, printer, options, "watch", step, locked=False)


@task
def status(c):
    """Each instance: port, role, pid, release it runs from (/proc), memory; and the host's free memory and disk."""
    printer = printer_for()

    def step(run: HostRun) -> str:
        s = _streamlit(run)
        st = stack.status(run)
        rows = [[f":{i.port}", i.role, st.instances[i.port].pid or "down", st.instances[i.port].release or "-",
                 f"{st.instances[i.port].rss_kb / 1024:.0f} MiB"] for i in s.instances]
        printer.line(table(["instance", "role", "pid", "release", "rss"], rows), run.host, level=0)
        return stack.short_state(stack.state_of(run, st))

    on_each_host(c, printer, Options(), "status", step, locked=False)


@task(help={"dry-run": "print the commands, change nothing", "verbose": "show every command"})
def restart(c, dry_run=False, verbose=False):
    """Staged, rolling restart onto `current`: staging first, then each primary (drained from nginx)."""
    printer, options = options_for(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        _streamlit(run)
        run.release = Release(id=known_release(run, run.state.current), ref="")
        return stack.roll(run, run.release.id, force=True)

    on_each_host(c, printer, options, "restart", step)


@task(help={"verbose": "show every command"})
def stop(c, verbose=False):
    """Stop every instance started by the pidfile manager (the sandbox: `fab -H local-streamlit streamlit.stop`)."""
    printer, options = options_for(False, verbose, False)

    def step(run: HostRun) -> str:
        s = _streamlit(run)
        if s.manager != "pidfile":
            raise UsageError(f"{run.host}: stop the {s.manager} programs with {s.manager} itself")
        stopped = []
        for inst in s.instances:
            pid = manager.manager_cmds(run.app, run.layout, inst.port)["pid"]
            out = run.remote.run(f'p=$({{ {pid}; }} 2>/dev/null); [ -n "$p" ] && kill -TERM "$p" && echo "$p"',
                                 warn=True).stdout.strip()
            if out:
                stopped.append(f":{inst.port} pid {out}")
        return f"stopped {', '.join(stopped)}" if stopped else "no instance was running"

    on_each_host(c, printer, options, "stop", step)


@task
def command(c):
    """Print each instance's command line, for your supervisor programs or systemd units."""
    printer = printer_for()

    def step(run: HostRun) -> str:
        s = _streamlit(run)
        for inst in s.instances:
            printer.line(f"{manager.unit_name(s, inst.port)}: {manager.program_command(run.app, run.layout, inst.port)}",
                         run.host, level=0)
        return f"{len(s.instances)} instance(s), manager {s.manager}"

    on_each_host(c, printer, Options(), "command", step, locked=False)


ns = Collection("streamlit", status, restart, stop, command)
