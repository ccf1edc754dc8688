"""restart_gunicorn: graceful reload under systemd, supervisor or a pidfile, then proof
that the workers serve the new release (their working directory is that release).

Actions: `reload` (HUP: new workers, same master), `upgrade` (USR2: a new master on the
new venv, then the old one stops; pidfile manager only), `restart` (stop + start, on
request or when the venv changed under supervisor/systemd), and `start` whenever
gunicorn is not running. gunicorn runs from `current/` with `--chdir
current`, so a HUP re-reads the symlink and new workers load the new code.
"""

from __future__ import annotations

import shlex

from ..errors import StepFailed
from ..inventory import App
from ..layout import Layout
from ..remote import Remote

q = shlex.quote


def gunicorn_argv(app: App, layout: Layout) -> list[str]:
    """The gunicorn command line; use it in your supervisor program or systemd unit too."""
    g = app.gunicorn
    venv = f"{layout.current}/.venv/bin"
    # python + script path through `current`: a USR2 re-exec then picks up the new venv.
    argv = [
        f"{venv}/python", f"{venv}/gunicorn",
        "--chdir", layout.current,
        "--bind", g.bind,
        "--workers", str(g.workers),
        "--timeout", str(g.timeout),
        "--pid", layout.pidfile,
        "--error-logfile", f"{layout.shared}/gunicorn.log",
    ]
    if g.control_socket:
        argv += ["--control-socket", f"{layout.shared}/gunicorn.ctl"]
    return argv + list(g.args) + [g.app_module]


def _ctl(app: App) -> str:
    g = app.gunicorn
    sudo = "sudo -n " if g.sudo else ""
    if g.manager == "supervisor":
        conf = f" -c {q(g.supervisor_conf)}" if g.supervisor_conf else ""
        return f"{sudo}supervisorctl{conf}"
    return f"{sudo}systemctl"


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
            "restart": f'kill -TERM "$pid"; {_wait_gone("$pid", g.restart_timeout)}; {start}',
        }
    ctl = _ctl(app)
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


def _wait_gone(pid: str, seconds: float) -> str:
    return f'j=0; while alive {pid} && [ $j -lt {int(seconds * 10)} ]; do sleep 0.1; j=$((j+1)); done'


def restart_script(app: App, layout: Layout, release_id: str, full: bool = False) -> str:
    """One round trip: start, or reload / upgrade / restart, then wait until every worker
    runs `release_id` and (after a reload) none of the workers from before is left. The
    venv the running master started with is kept in .shipfab/running-venv: a release on
    another venv needs a new master (USR2 under the pidfile manager; restart under
    supervisor/systemd, where a USR2 child would escape them).

    After USR2 the new master writes `<pidfile>.2` and renames it to the pidfile once the
    old master has exited; if the new master never serves, it is stopped again."""
    g = app.gunicorn
    cmds = manager_cmds(app, layout)
    limit = int(g.restart_timeout * 10)
    upgrade = g.manager == "pidfile"
    new_master = 'kill -USR2 "$pid" && old=$pid' if upgrade else cmds["restart"]
    running_venv = q(f"{layout.meta}/running-venv")
    pid_of = (f'pid_of() {{ if [ -n "$old" ]; then cat {q(layout.pidfile + ".2")}; else {cmds["pid"]}; fi; }}'
              if upgrade else f"pid_of() {{ {cmds['pid']}; }}")
    read_pid = 'p=$(pid_of 2>/dev/null); case "$p" in ""|0|*[!0-9]*) p=;; esac'
    return "\n".join([
        "alive() { [ -d /proc/$1 ] && ! grep -q '^State:[[:space:]]*Z' /proc/$1/status 2>/dev/null; }",
        pid_of,
        f"want=$(cd {q(layout.release(release_id))} && pwd -P) || exit 1",
        f"venv=$(readlink {q(layout.release(release_id) + '/.venv')}); ran=$(cat {running_venv} 2>/dev/null)",
        f"old=; {read_pid}; pid=$p; before=; same=",
        'if [ -z "$pid" ] || ! alive "$pid"; then',
        f"  {cmds['start']} || exit 1; echo ACTION start",
        f"elif [ {'1' if full else '0'} = 1 ]; then",
        f"  {cmds['restart']} || exit 1; echo ACTION restart",
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
        '  if [ -n "$p" ] && alive "$p"; then',
        '    for w in $(pgrep -P "$p"); do n=$((n+1)); [ "$(readlink /proc/$w/cwd)" = "$want" ] || bad=1',
        '      case " $before " in *" $w "*) bad=1;; esac; done',
        "  fi",
        f'  if [ $n -ge {g.workers} ] && [ $bad = 0 ]; then echo "SERVING $p $n"; break; fi',
        f"  i=$((i+1)); if [ $i -ge {limit} ]; then",
        f'    echo "gunicorn is not serving release {release_id}: master=${{p:-none}}, $n workers" >&2',
        '    if [ -n "$old" ] && [ -n "$p" ]; then kill -TERM "$p"; fi',
        f"    tail -n 15 {q(layout.shared + '/gunicorn.log')} >&2 2>/dev/null; exit 1",
        "  fi",
        "  sleep 0.1",
        "done",
        f'printf \'%s\\n\' "$venv" > {running_venv}',
        'if [ -n "$old" ]; then',
        f'  new=$p; kill -TERM "$old"; {_wait_gone("$old", g.restart_timeout)}',
        f'  j=0; while [ "$(cat {q(layout.pidfile)} 2>/dev/null)" != "$new" ] && [ $j -lt {limit} ]; do'
        "    sleep 0.1; j=$((j+1)); done",
        "fi",
    ])


def restart_gunicorn(remote: Remote, app: App, layout: Layout, release_id: str, *, full: bool = False) -> str:
    """Start or gracefully reload gunicorn and confirm its workers run `release_id`."""
    script = restart_script(app, layout, release_id, full)
    out = remote.run(script, timeout=app.gunicorn.restart_timeout * 2 + 30).stdout
    if remote.dry_run:
        return "dry-run"
    words = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    if "SERVING" not in words:
        raise StepFailed(f"{remote.host}: gunicorn did not confirm release {release_id}: {out.strip()[-300:]}")
    return f"{words.get('ACTION', '?')}, {words['SERVING'].split()[1]} workers on {release_id}"
