"""streamlit stack: a Streamlit app run as several instances (one process per port).

Automates seeds/001 (FinDocPipeline): backups of the app file, the recorded system state,
kill/restart by PID, wait for the port, curl, the 10-minute CPU/memory watch, rollback to
the newest backup and the deployment log — as the symlink strategy (every file beside the
script is part of the release), the streamlit manager (supervisor / systemd / pidfile, one
process per port), the nginx upstream shipfab owns (draining) and the database plugin.

Publishing is a staged, rolling restart: the staging instances first, then the primaries one
at a time — drained from the nginx upstream, restarted, proven to run from the new release
(/proc/PID/cwd) and to answer /_stcore/health and GET /, put back. A release that fails on
staging never touches a primary. Rollback and undo roll the same way onto the release that
is current, restarting only the instances that do not already run it.
"""

from __future__ import annotations

import time
from typing import Any

from .. import dbflow
from ..context import HostRun
from ..errors import StepFailed
from ..inventory import StreamlitInstance
from ..managers import streamlit as manager
from ..managers.streamlit_boot import boot_check as boot_probe
from ..output import first_error
from ..probes import watch as watcher
from ..steps import nginx_upstream
from ..strategies import symlink
from .base import Stack, Step

DRAIN_SECONDS = 0.5  # after the drained upstream is live: requests still in flight to the instance finish


def status(run: HostRun, health: bool = False) -> manager.HostStatus:
    """Every instance (pid, release, RSS, CPU ticks; `health`: its /_stcore/health answer) and the host's
    free memory and disk: one read-only command."""
    return manager.parse_status(run.remote.run(manager.status_cmd(run.app, run.layout, health), change=False).stdout)


def health(run: HostRun) -> str:
    """`fab health-check` / `inv health`: every instance (staging and primaries) has a process working in
    `current` and its /_stcore/health answers "ok" (one read-only command, no waiting)."""
    current = run.state.current
    if not current:
        raise StepFailed(f"{run.host}: no release is current")
    st = status(run, health=True)
    problems, serving = [], []
    for inst in manager.settings(run.app).instances:
        name, cur = f"{inst.role} instance {inst.port}", st.instances.get(inst.port)
        if cur is None or cur.pid is None:
            problems.append(f"{name}: no process")
        elif not cur.runs(current):
            problems.append(f"{name}: pid {cur.pid} runs from {cur.release or cur.cwd or '?'}, not current ({current})")
        elif problem := cur.health_problem():
            problems.append(f"{name}: pid {cur.pid}: {problem}")
        else:
            serving.append(f":{inst.port} pid {cur.pid}")
    if problems:
        raise StepFailed(f"{run.host}: " + "; ".join(problems))
    return f"{len(serving)} instance(s) on {current}, /_stcore/health ok ({', '.join(serving)})"


def boot_check(run: HostRun, release_id: str) -> str:
    return boot_probe(run.remote, run.app, run.layout, release_id)


def restart_instance(run: HostRun, inst: StreamlitInstance, release_id: str) -> str:
    """Restart one instance and wait until a new process serves `release_id`; returns its pid."""
    s = manager.settings(run.app)
    res = run.remote.run(manager.restart_script(run.app, run.layout, inst, release_id), warn=True,
                         timeout=s.restart_timeout * 3 + 30)
    pid = next((line.split()[1] for line in res.stdout.splitlines() if line.startswith("SERVING ")), "")
    if not res.ok or not pid:
        err = run.printer.redact(res.stderr.strip() or res.stdout.strip())
        cause = first_error(err) or (err.splitlines()[0] if err else f"exit {res.exited}")
        tail = "\n".join(err.splitlines()[-8:])
        raise StepFailed(f"{run.host}: {inst.role} instance {inst.port} did not serve release {release_id}: {cause}\n{tail}")
    return pid


def upstream_text(run: HostRun, drained: int | None = None) -> str:
    """The upstream of the primaries (`drained` marked down)."""
    s, nginx = manager.settings(run.app), run.app.nginx
    assert nginx is not None
    addr = manager.local_address(s)
    servers = [(f"{addr}:{i.port}", 0 if i.port == drained else 1) for i in s.instances if i.role == "primary"]
    return nginx_upstream.render(nginx.upstream, servers)


def _restore_upstream(run: HostRun) -> str:
    assert run.app.nginx is not None
    nginx_upstream.publish(run.remote, run.app.nginx, upstream_text(run))
    return "every primary is in the nginx upstream again"


def roll(run: HostRun, release_id: str, force: bool = False) -> str:
    """Staging instances, then primaries one at a time (drained from nginx when there is one and
    another primary serves meanwhile); instances already running `release_id` are left alone
    (`force`: every instance restarts)."""
    s = manager.settings(run.app)
    if run.remote.dry_run:
        order = ", ".join(f":{i.port} ({i.role})" for i in sorted(s.instances, key=lambda i: i.role != "staging"))
        run.printer.line(f"would restart one at a time onto {release_id}: {order}", run.host, level=0)
        return "dry-run"
    before = status(run).instances
    staging = [i for i in s.instances if i.role == "staging"]
    primaries = [i for i in s.instances if i.role == "primary"]
    drain = run.app.nginx is not None and len(primaries) > 1
    restarted, kept = [], []
    for inst in staging + primaries:
        was = before.get(inst.port)
        if not force and was is not None and was.runs(release_id):
            kept.append(f":{inst.port}")
            continue
        if drain and inst.role == "primary":
            if not any(u.name == "nginx_upstream" for u in run.undos):
                run.on_undo("nginx_upstream", lambda: _restore_upstream(run))
            assert run.app.nginx is not None
            nginx_upstream.publish(run.remote, run.app.nginx, upstream_text(run, drained=inst.port))
            time.sleep(DRAIN_SECONDS)
        pid = restart_instance(run, inst, release_id)
        if drain and inst.role == "primary":
            assert run.app.nginx is not None
            nginx_upstream.publish(run.remote, run.app.nginx, upstream_text(run))
        restarted.append(f":{inst.port} pid {pid}")
    how = "drained one at a time" if drain and any(r.startswith(tuple(f":{i.port} " for i in primaries))
                                                   for r in restarted) else "one at a time"
    detail = f"{len(restarted)} on {release_id} ({how}: {', '.join(restarted) or '-'})"
    return detail + (f"; already on it: {' '.join(kept)}" if kept else "")


def activate(run: HostRun, release_id: str) -> str:
    """Make `release_id` (already current) serve: the same staged, rolling restart."""
    return roll(run, release_id)


def state_of(run: HostRun, st: manager.HostStatus) -> dict[str, Any]:
    """What the release log records (seeds/001's "System State Documentation")."""
    s = manager.settings(run.app)
    return {
        "instances": [{"port": i.port, "role": i.role, "pid": st.instances[i.port].pid,
                       "release": st.instances[i.port].release or None,
                       "rss_mb": round(st.instances[i.port].rss_kb / 1024, 1)} for i in s.instances],
        "mem_available_mb": st.mem_available_kb // 1024,
        "mem_total_mb": st.mem_total_kb // 1024,
        "disk_free_mb": st.disk_free_kb // 1024,
        "disk_free_percent": round(100 * st.disk_free_kb / st.disk_total_kb, 1) if st.disk_total_kb else None,
    }


def short_state(state: dict[str, Any]) -> str:
    """One line for `fab releases`: `:8501 up 61M, :8504 down; mem 3100M free; disk 41%`."""
    parts = [f":{i['port']} " + (f"up {i['rss_mb']:.0f}M" if i.get("pid") else "down") for i in state.get("instances", [])]
    return f"{', '.join(parts)}; mem {state.get('mem_available_mb')}M free; disk {state.get('disk_free_percent')}% free"


def record(run: HostRun, when: str) -> str:
    """Step: record every instance and the host's memory and disk into the release log entry."""
    state = state_of(run, status(run))
    run.release.record[f"state_{when}"] = state
    return short_state(state)


def watch_step(run: HostRun, seconds: float | None = None) -> str:
    """Step watch: sample every instance for the window; a breach or a dying instance fails the deploy."""
    s = manager.settings(run.app)
    window = s.watch.seconds if seconds is None else seconds
    if run.remote.dry_run:
        return f"dry-run: would watch {window:g} s"
    if window <= 0:
        return "no watch window (watch.seconds = 0)"
    figures = watcher.watch(lambda: status(run), s.instances, s.watch, window, where=f"{run.host}: ")
    return f"{window:g} s within limits ({s.watch.max_cpu_percent:g} % cpu, {s.watch.max_memory_mb:g} MiB): " \
           f"{figures.summary()}"


STREAMLIT = Stack(
    name="streamlit",
    steps=(
        Step("deploy_code", symlink.deploy_code),
        Step("pip_sync", symlink.pip_sync),
        Step("record_state", lambda run: record(run, "before")),
        Step("backup_db", dbflow.backup_step, "migrate"),
        Step("migrate", dbflow.migrate_step, "migrate"),
        Step("boot_check", lambda run: boot_check(run, run.release.id)),
        Step("switch_release", lambda run: symlink.switch(run, activate), "publish"),
        Step("restart_instances", lambda run: roll(run, run.release.id), "publish"),
        Step("watch", watch_step, "verify"),
        Step("record_state_after", lambda run: record(run, "after"), "verify"),
    ),
    boot_check=boot_check,
    activate=activate,
    health=health,
)
