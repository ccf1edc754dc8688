"""The worker stack's long-running processes under supervisor, systemd or a pidfile.

Stop: each process gets SIGTERM (supervisor/systemd: their own stop, whose stopwaitsecs /
TimeoutStopSec should be >= its `stop_timeout`) and `stop_timeout` seconds to finish the job
in progress before SIGKILL. Start: always from `current`, then proven: each process is alive
a second later and its working directory is the release `current` points at.

pidfile manager (no root, no supervisor): the one launcher (steps/launcher.py) in daemon mode
starts `command` in a session of its own, with current's venv and the app's .env, output to
shared/worker-<name>.log, pid in shared/worker-<name>.pid; stopping signals the process group.
supervisor / systemd: the program (unit) is named like the process; run it from current, e.g.
`worker_argv()` as the supervisor program's command.
"""

from __future__ import annotations

import shlex

from ..errors import StepFailed
from ..inventory import App, WorkerProcess, WorkerSettings
from ..layout import Layout
from ..remote import Remote
from ..steps.launcher import launch_cmd, launch_stdin
from . import process_control

q = shlex.quote
READ_PID = 'case "$pid" in ""|*[!0-9]*) pid=;; esac'


def pidfile(layout: Layout, proc: WorkerProcess) -> str:
    return f"{layout.shared}/worker-{proc.name}.pid"


def logfile(layout: Layout, proc: WorkerProcess) -> str:
    return f"{layout.shared}/worker-{proc.name}.log"


def worker_argv(layout: Layout, proc: WorkerProcess) -> list[str]:
    """A supervisor program's / systemd unit's command: the process run from `current` with its venv."""
    cur = layout.current
    return ["bash", "-c", f"cd {q(cur)} && PATH={q(cur + '/.venv/bin')}:\"$PATH\" exec {proc.command}"]


def _ctl(w: WorkerSettings) -> str:
    return process_control.ctl(w.manager, w.sudo, w.supervisor_conf)


def pid_cmd(w: WorkerSettings, layout: Layout, proc: WorkerProcess) -> str:
    """Prints the process's main pid (nothing or 0 when it does not run)."""
    if w.manager == "pidfile":
        return f"cat {q(pidfile(layout, proc))} 2>/dev/null"
    if w.manager == "supervisor":
        return f"{_ctl(w)} pid {q(proc.name)} 2>/dev/null"
    return f"systemctl show -p MainPID --value {q(proc.name)} 2>/dev/null"


def ours(layout: Layout) -> str:
    """Shell test: `$pid` is alive and runs from one of the app's releases (never a recycled pid)."""
    return ('[ -n "$pid" ] && alive "$pid" && case "$(readlink /proc/$pid/cwd)" in "$rel"/*) true;; *) false;; esac')


def stop_script(w: WorkerSettings, layout: Layout) -> str:
    """Stop every process gracefully (SIGTERM, `stop_timeout` to finish, then SIGKILL); one
    `STOPPED <name> graceful|killed|not-running` line each."""
    lines = [process_control.ALIVE, f"rel=$(cd {q(layout.releases)} 2>/dev/null && pwd -P) || rel=/nonexistent"]
    for p in w.processes:
        limit = int(p.stop_timeout * 10)
        wait = f'j=0; while alive "$pid" && [ $j -lt {limit} ]; do sleep 0.1; j=$((j+1)); done'
        lines.append(f"pid=$({pid_cmd(w, layout, p)}); {READ_PID}")
        if w.manager == "pidfile":
            lines += [
                f"if {ours(layout)}; then kill -TERM -- -\"$pid\" 2>/dev/null || kill -TERM \"$pid\"; {wait}",
                f'  if alive "$pid"; then kill -KILL -- -"$pid" 2>/dev/null || kill -KILL "$pid"; '
                f"echo STOPPED {q(p.name)} killed; else echo STOPPED {q(p.name)} graceful; fi",
                f"else echo STOPPED {q(p.name)} not-running; fi; rm -f {q(pidfile(layout, p))}",
            ]
        else:
            guard = f"timeout {int(p.stop_timeout) + 30}"
            lines += [
                "if [ -n \"$pid\" ] && [ \"$pid\" != 0 ] && alive \"$pid\"; then",
                f"  {guard} {_ctl(w)} stop {q(p.name)} >/dev/null || exit 1",
                f'  if alive "$pid"; then echo STOPPED {q(p.name)} killed; else echo STOPPED {q(p.name)} graceful; fi',
                f"else echo STOPPED {q(p.name)} not-running; fi",
            ]
    return "\n".join(lines)


def start_cmd(w: WorkerSettings, layout: Layout, proc: WorkerProcess, python: str) -> str:
    """Start one process from `current` unless it already runs (pidfile: the launcher reads the env on stdin)."""
    running = [process_control.ALIVE, f"rel=$(cd {q(layout.releases)} 2>/dev/null && pwd -P) || rel=/nonexistent",
               f"pid=$({pid_cmd(w, layout, proc)}); {READ_PID}"]
    if w.manager == "pidfile":
        start = launch_cmd(python, layout.current, proc.command, (pidfile(layout, proc), logfile(layout, proc)))
        return "\n".join([*running, f"if {ours(layout)}; then echo RUNNING; else {start} >/dev/null; fi"])
    return "\n".join([*running, f"if [ -n \"$pid\" ] && [ \"$pid\" != 0 ] && alive \"$pid\"; then echo RUNNING; "
                                f"else {_ctl(w)} start {q(proc.name)} >/dev/null; fi"])


def verify_script(w: WorkerSettings, layout: Layout) -> str:
    """A second after the start: `UP <name> <pid>` when it is alive in current's release, else
    `DOWN <name> <why>` (and the tail of its log under the pidfile manager)."""
    lines = [process_control.ALIVE, f"want=$(cd {q(layout.current)} && pwd -P) || exit 1", "sleep 1"]
    for p in w.processes:
        tail = f"; tail -n 8 {q(logfile(layout, p))} >&2 2>/dev/null" if w.manager == "pidfile" else ""
        lines += [
            f"pid=$({pid_cmd(w, layout, p)}); {READ_PID}",
            f'if [ -z "$pid" ] || [ "$pid" = 0 ] || ! alive "$pid"; then echo DOWN {q(p.name)} exited{tail}',
            f'elif [ "$(readlink /proc/$pid/cwd)" != "$want" ]; then echo DOWN {q(p.name)} "runs in $(readlink /proc/$pid/cwd)"',
            f'else echo UP {q(p.name)} "$pid"; fi',
        ]
    return "\n".join(lines)


def parse_lines(out: str, word: str) -> dict[str, str]:
    """{name: rest} of the `<WORD> <name> <rest>` lines."""
    found = {}
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) >= 2 and parts[0] == word:
            found[parts[1]] = parts[2] if len(parts) > 2 else ""
    return found


def stop_processes(remote: Remote, app: App) -> str:
    """Stop every process gracefully; a short detail."""
    w = app.worker
    if w is None or not w.processes:
        return "no processes"
    timeout = sum(p.stop_timeout for p in w.processes) + 60
    out = remote.run(stop_script(w, Layout(app.deploy_to)), timeout=timeout).stdout
    if remote.dry_run:
        return "dry-run"
    stopped = parse_lines(out, "STOPPED")
    return ", ".join(f"{name} {how}" for name, how in stopped.items())


def start_processes(remote: Remote, app: App, env: dict[str, str]) -> str:
    """Start every process that does not run from `current`, then prove each runs there."""
    w = app.worker
    if w is None or not w.processes:
        return "no processes"
    layout = Layout(app.deploy_to)
    for p in w.processes:
        remote.run(start_cmd(w, layout, p, app.python), stdin=launch_stdin(env) if w.manager == "pidfile" else None,
                   show_output=False, timeout=120)
    res = remote.run(verify_script(w, layout), change=False, warn=True)
    if remote.dry_run:
        return "dry-run"
    down = parse_lines(res.stdout, "DOWN")
    if down or not res.ok:
        why = "; ".join(f"{n}: {d}" for n, d in down.items()) or res.stderr.strip()
        raise StepFailed(f"{remote.host}: worker process(es) not running from current: {why}\n"
                         f"{remote.printer.redact(res.stderr.strip())}".rstrip())
    up = parse_lines(res.stdout, "UP")
    return ", ".join(f"{n} pid {pid}" for n, pid in up.items())


def restart_processes(remote: Remote, app: App, env: dict[str, str]) -> str:
    """Stop each process gracefully, then start it from `current`."""
    stopped = stop_processes(remote, app)
    started = start_processes(remote, app, env)
    return f"stopped: {stopped}; started: {started}"
