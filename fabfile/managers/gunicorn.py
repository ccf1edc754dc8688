"""gunicorn under systemd, supervisor or a pidfile: (re)start it, then prove that the
workers serve the new release (their working directory is that release). Before any
process is touched, `boot_check` (boot_check.py) proves the release imports and answers.

Actions: `reload` (HUP: new workers, same master), `upgrade` (USR2: a new master on the
new venv, then the old one stops; pidfile manager only), `restart` (stop + start, on
request or when the venv changed under supervisor/systemd), and `start` whenever gunicorn
is not running. gunicorn runs from `current/` with `--chdir current`, so a HUP re-reads the
symlink and new workers load the new code.

A restart under supervisor/systemd goes through a handover, so no request fails: their
gunicorn runs with `--reuse-port`; a temporary gunicorn of the new release binds the same
address (`--reuse-port`, pidfile shared/gunicorn-handover.pid) and serves while the managed
program restarts, then stops once the managed workers run the new release. Linux moves
the connections queued on a closing `--reuse-port` socket to the others only with
`net.ipv4.tcp_migrate_req=1` (a warning says so when it is not). When the running master
lacks `--reuse-port` (or runs as another user), the handover cannot bind: a plain restart,
with a warning. A handover left by an interrupted run is stopped once the managed master
serves. The pidfile manager needs no handover (USR2 keeps the sockets), and gets no
`--reuse-port`: a USR2 re-exec of a `--reuse-port` master fails in gunicorn 27.
"""

from __future__ import annotations

import shlex

from ..errors import StepFailed
from ..inventory import App
from ..layout import Layout
from ..output import first_error
from ..remote import Remote
from . import process_control
from .boot_check import boot_check

__all__ = ["boot_check", "gunicorn_argv", "handover_argv", "manager_cmds", "restart_gunicorn", "restart_script"]

q = shlex.quote
HANDOVER_MANAGERS = ("supervisor", "systemd")


def handover_pidfile(layout: Layout) -> str:
    return f"{layout.shared}/gunicorn-handover.pid"


def _argv(app: App, layout: Layout, root: str, pidfile: str, control: list[str]) -> list[str]:
    g = app.gunicorn
    venv = f"{root}/.venv/bin"
    # python + script path through `root`: a USR2 re-exec through `current` picks up the new venv.
    argv = [
        f"{venv}/python", f"{venv}/gunicorn",
        "--chdir", root,
        "--bind", g.bind,
        "--workers", str(g.workers),
        "--timeout", str(g.timeout),
        "--pid", pidfile,
        "--error-logfile", f"{layout.shared}/gunicorn.log",
    ]
    if g.manager in HANDOVER_MANAGERS:
        argv.append("--reuse-port")
    return argv + control + list(g.args) + [g.app_module]


def gunicorn_argv(app: App, layout: Layout) -> list[str]:
    """The gunicorn command line; use it in your supervisor program or systemd unit too."""
    control = ["--control-socket", f"{layout.shared}/gunicorn.ctl"] if app.gunicorn.control_socket else []
    return _argv(app, layout, layout.current, layout.pidfile, control)


def handover_argv(app: App, layout: Layout, release_id: str) -> list[str]:
    """The temporary gunicorn of a handover: the release's own code and venv, the same bind,
    its own pidfile, daemonized, and no control socket (it would take the managed one's)."""
    control = ["--no-control-socket"] if app.gunicorn.control_socket else []
    return _argv(app, layout, layout.release(release_id), handover_pidfile(layout), control) + ["--daemon"]


def manager_cmds(app: App, layout: Layout) -> dict[str, str]:
    """Shell snippets per manager: pid (prints the master pid), start, reload, restart."""
    g = app.gunicorn
    name = q(g.program)
    if g.manager == "pidfile":
        start = f"cd {q(layout.current)} && {shlex.join(gunicorn_argv(app, layout))} --daemon </dev/null >/dev/null 2>&1"
        return {
            "pid": f"cat {q(layout.pidfile)}",
            "start": start,
            "reload": 'kill -HUP "$pid"',
            "restart": f'kill -TERM "$pid"; wait_gone "$pid"; {start}',
        }
    ctl = process_control.ctl(g.manager, g.sudo, g.supervisor_conf)
    if g.manager == "supervisor":
        return {
            "pid": f"{ctl} pid {name}",
            "start": f"{ctl} start {name} >/dev/null",
            "reload": f"{ctl} signal HUP {name} >/dev/null",
            "restart": f"{ctl} restart {name} >/dev/null",
        }
    return {
        "pid": f"systemctl show -p MainPID --value {name}",
        "start": f"{ctl} start {name}",
        "reload": f"{ctl} reload {name}",
        "restart": f"{ctl} restart {name}",
    }


def handover_fns(app: App, layout: Layout, release_id: str) -> list[str]:
    """Shell functions `stop_handover` (stops the handover master named by its pidfile, if it
    really is one) and `handover` (starts one for `release_id` next to the running master
    `$pid` and waits for its workers; returns 1, with a WARN line, when it cannot bind)."""
    g = app.gunicorn
    argv = shlex.join(handover_argv(app, layout, release_id))
    start = f"(cd {q(layout.release(release_id))} && {argv} </dev/null >/dev/null 2>&1)"
    no_handover = "restarted without a handover, requests fail while gunicorn restarts"
    return [
        f"hpid={q(handover_pidfile(layout))}",
        'stop_handover() { h=$(cat "$hpid" 2>/dev/null); case "$h" in ""|*[!0-9]*) h=;; esac',
        r'''  if [ -n "$h" ] && alive "$h" && tr '\0' ' ' < /proc/$h/cmdline | grep -qF -- "$hpid"; then''',
        '    kill -TERM "$h"; wait_gone "$h" || { echo "WARN the handover gunicorn (pid $h) did not stop"; return 1; }',
        '  fi; rm -f "$hpid"; }',
        "handover() {",
        r"""  if ! tr '\0' '\n' < /proc/$pid/cmdline | grep -qx -- --reuse-port; then""",
        f'    echo "WARN the running gunicorn (pid $pid) lacks --reuse-port, so no second gunicorn can share its port:'
        f' {no_handover}; add --reuse-port to its command"; return 1; fi',
        "  if [ \"$(awk '/^Uid:/{print $3}' /proc/$pid/status)\" != \"$(id -u)\" ]; then",
        f'    echo "WARN the running gunicorn (pid $pid) runs as another user than this login: {no_handover}"; return 1; fi',
        "  stop_handover || return 1",
        f'  {start} || {{ echo "WARN the handover gunicorn did not start: {no_handover}"; return 1; }}',
        "  i=0; hp=",
        "  while :; do",
        '    h=$(cat "$hpid" 2>/dev/null); [ -n "$h" ] && hp=$h; n=0; bad=0',
        '    if [ -n "$hp" ] && alive "$hp"; then count "$hp"; fi',
        f'    if [ $n -ge {g.workers} ] && [ $bad = 0 ]; then echo "HANDOVER $hp $n"; return 0; fi',
        f'    i=$((i+1)); if {{ [ -n "$hp" ] && ! alive "$hp"; }} || [ $i -ge {int(g.restart_timeout * 10)} ]; then',
        f'      echo "release {release_id} does not start under gunicorn (handover master ${{hp:-none}}, $n workers);'
        ' the running gunicorn was not touched" >&2',
        f"      stop_handover; tail -n 15 {q(layout.shared + '/gunicorn.log')} >&2 2>/dev/null; exit 1",
        "    fi; sleep 0.1",
        "  done; }",
        "m=$(cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null) || m=unavailable",
        'if [ "$m" != 1 ] && [ -n "$pid" ] && alive "$pid"; then echo "WARN net.ipv4.tcp_migrate_req=$m: Linux resets'
        " the connections still queued on a --reuse-port socket that closes (each gunicorn worker has one);"
        ' set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1, and in /etc/sysctl.d/)"; fi',
    ]


def restart_script(app: App, layout: Layout, release_id: str, full: bool = False) -> str:
    """One round trip: start, or reload / upgrade / restart, then wait until every worker
    runs `release_id` and (after a reload) none of the workers from before is left. The
    venv the running master started with is kept in .shipfab/running-venv: a release on
    another venv needs a new master (USR2 under the pidfile manager; a restart through a
    handover under supervisor/systemd, where a USR2 child would escape them).

    After USR2 the new master writes `<pidfile>.2` and renames it to the pidfile once the
    old master has exited; if the new master never serves, it is stopped again. If the
    managed master never serves after a restart, the handover keeps serving until the next
    restart (the undo's), which stops it."""
    g = app.gunicorn
    cmds = manager_cmds(app, layout)
    limit = int(g.restart_timeout * 10)
    upgrade = g.manager == "pidfile"
    handover = g.manager in HANDOVER_MANAGERS
    restart = f"{{ handover; {cmds['restart']}; }}" if handover else cmds["restart"]
    new_master = 'kill -USR2 "$pid" && old=$pid' if upgrade else restart
    running_venv = q(f"{layout.meta}/running-venv")
    pid_of = (f'pid_of() {{ if [ -n "$old" ]; then cat {q(layout.pidfile + ".2")}; else {cmds["pid"]}; fi; }}'
              if upgrade else f"pid_of() {{ {cmds['pid']}; }}")
    read_pid = 'p=$(pid_of 2>/dev/null); case "$p" in ""|*[!0-9]*) p=;; esac'
    return "\n".join([
        process_control.ALIVE,
        f'wait_gone() {{ j=0; while alive "$1" && [ $j -lt {limit} ]; do sleep 0.1; j=$((j+1)); done; ! alive "$1"; }}',
        'count() { for w in $(pgrep -P "$1"); do n=$((n+1)); [ "$(readlink /proc/$w/cwd)" = "$want" ] || bad=1',
        '  case " $before " in *" $w "*) bad=1;; esac; done; }',
        pid_of,
        f"want=$(cd {q(layout.release(release_id))} && pwd -P) || exit 1",
        f"venv=$(readlink {q(layout.release(release_id) + '/.venv')}); ran=$(cat {running_venv} 2>/dev/null)",
        f"old=; {read_pid}; pid=$p; before=; same=",
        *(handover_fns(app, layout, release_id) if handover else []),
        'if [ -z "$pid" ] || ! alive "$pid"; then',
        f"  {cmds['start']} || exit 1; echo ACTION start",
        f"elif [ {'1' if full else '0'} = 1 ]; then",
        f"  {restart} || exit 1; echo ACTION restart",
        'elif [ "$venv" != "$ran" ]; then',
        f"  {new_master} || exit 1; echo ACTION {'upgrade' if upgrade else 'restart'}",
        "else",
        '  before=$(pgrep -P "$pid" | tr "\\n" " "); same=$pid',
        f"  {cmds['reload']} || exit 1; echo ACTION reload",
        "fi",
        "i=0",
        "while :; do",
        # a reload keeps the master: no need to ask the process manager again on every poll
        f'  if [ -n "$same" ]; then p=$same; else {read_pid}; fi; n=0; bad=0',
        '  if [ -n "$p" ] && alive "$p"; then count "$p"; fi',
        f'  if [ $n -ge {g.workers} ] && [ $bad = 0 ]; then echo "SERVING $p $n"; break; fi',
        f"  i=$((i+1)); if [ $i -ge {limit} ]; then",
        f'    echo "gunicorn is not serving release {release_id}: master=${{p:-none}}, $n workers" >&2',
        '    if [ -n "$old" ] && [ -n "$p" ]; then kill -TERM "$p"; fi',
        *(['    h=$(cat "$hpid" 2>/dev/null) && echo "the handover gunicorn (pid $h) serves until the next restart" >&2']
          if handover else []),
        f"    tail -n 15 {q(layout.shared + '/gunicorn.log')} >&2 2>/dev/null; exit 1",
        "  fi",
        "  sleep 0.1",
        "done",
        f'printf \'%s\\n\' "$venv" > {running_venv}',
        'if [ -n "$old" ]; then',
        '  new=$p; kill -TERM "$old"; wait_gone "$old"',
        f'  j=0; while [ "$(cat {q(layout.pidfile)} 2>/dev/null)" != "$new" ] && [ $j -lt {limit} ]; do'
        "    sleep 0.1; j=$((j+1)); done",
        "fi",
        *(["stop_handover || :"] if handover else []),
    ])


def parse_markers(out: str) -> tuple[dict[str, str], list[str]]:
    """The restart script's marker lines: {ACTION|SERVING|HANDOVER: rest}, and the WARN texts."""
    marks: dict[str, str] = {}
    warnings: list[str] = []
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key == "WARN":
            warnings.append(rest)
        elif key in ("ACTION", "SERVING", "HANDOVER"):
            marks[key] = rest
    return marks, warnings


def failure_message(host: str, release_id: str, stderr: str) -> str:
    """gunicorn's own error first (the first exception line of its log tail), then the tail."""
    cause = first_error(stderr) or "no error line in gunicorn's log"
    tail = "\n".join(stderr.strip().splitlines()[-8:])
    return f"{host}: gunicorn did not serve release {release_id}: {cause}\n{tail}"


def restart_gunicorn(remote: Remote, app: App, layout: Layout, release_id: str, *, full: bool = False) -> str:
    """Start, reload or restart gunicorn and confirm its workers run `release_id`."""
    script = restart_script(app, layout, release_id, full)
    res = remote.run(script, timeout=app.gunicorn.restart_timeout * 4 + 30, warn=True)
    if remote.dry_run:
        return "dry-run"
    marks, warnings = parse_markers(res.stdout)
    for warning in warnings:
        remote.printer.line(f"warning: {warning}", remote.host, level=0)
    if not res.ok or "SERVING" not in marks:
        raise StepFailed(failure_message(remote.host, release_id, remote.printer.redact(res.stderr or res.stdout)))
    action = marks.get("ACTION", "?")
    if action == "restart" and app.gunicorn.manager in HANDOVER_MANAGERS:
        action += " with handover" if "HANDOVER" in marks else " without handover"
    return f"{action}, {marks['SERVING'].split()[1]} workers on {release_id}"
