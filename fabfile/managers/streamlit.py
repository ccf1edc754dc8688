"""Streamlit instances, one process per port, under supervisor, systemd or a pidfile.

Every manager runs the same command (`program_command`): a shell that enters `current`,
resolves it (`pwd -P`) and execs the release's own streamlit with the script given
relative to it, so the process's working directory is `releases/<id>` and stays there
when `current` moves on: a running instance never reads the next release's files.

- supervisor: one program per port, `<program>-<port>`, its `command=` is
  `program_command(...)` (`fab streamlit.command` prints it); restart = `supervisorctl restart`.
- systemd: one unit per port, `<program>@<port>` (a template unit whose ExecStart is the
  command with `%i` as the port); restart = `systemctl restart`.
- pidfile: `setsid nohup <command> &`, output appended to `shared/streamlit-<port>.log`, the
  pid in `shared/streamlit-<port>.pid`; restart = TERM (KILL after the timeout), then start.

`restart_script` restarts ONE instance and waits until its process is a new one, its
working directory is the wanted release (read from /proc), `/_stcore/health` answers "ok",
`GET /` answers 200 and `/_stcore/script-health-check` (streamlit runs the script once in
the server: every instance runs with `--server.scriptHealthCheckEnabled true`) answers "ok".

`status_cmd` reads every instance in one round trip (pid,
release directory, RSS and CPU ticks of the process tree) plus the host's free memory and
disk: the watch window and the recorded state both use it; with `health=True` it also asks
each running instance's `/_stcore/health` (`fab health-check`, `inv health`).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass

from ..inventory import App, StreamlitInstance, StreamlitSettings
from ..layout import Layout
from . import process_control

q = shlex.quote


def settings(app: App) -> StreamlitSettings:
    if app.streamlit is None:
        raise ValueError(f"app {app.name} has no [apps.{app.name}.streamlit] settings")
    return app.streamlit


def unit_name(s: StreamlitSettings, port: int) -> str:
    """supervisor program `<program>-<port>`, systemd unit `<program>@<port>`."""
    return f"{s.program}@{port}" if s.manager == "systemd" else f"{s.program}-{port}"


def pidfile(layout: Layout, port: int) -> str:
    return f"{layout.shared}/streamlit-{port}.pid"


def logfile(layout: Layout, port: int) -> str:
    return f"{layout.shared}/streamlit-{port}.log"


def local_address(s: StreamlitSettings) -> str:
    """Where the host itself reaches an instance (a wildcard bind answers on loopback)."""
    return "127.0.0.1" if s.address in ("0.0.0.0", "::", "") else s.address


def streamlit_args(s: StreamlitSettings, port: int | str) -> list[str]:
    """`streamlit run` arguments after the executable (the script relative to the release)."""
    args = ["run", s.script, "--server.port", str(port), "--server.address", s.address,
            "--server.headless", "true", "--server.scriptHealthCheckEnabled", "true"]
    if not any(k == "browser.gatherUsageStats" for k, _ in s.options):
        args += ["--browser.gatherUsageStats", "false"]
    for key, value in s.options:
        args += [f"--{key}", value]
    return args


def inner_command(app: App, layout: Layout, port: int | str) -> str:
    """cd current, resolve it, exec the release's streamlit (what /bin/sh -c runs)."""
    args = " ".join(q(a) if a != "%i" else a for a in streamlit_args(settings(app), port))
    return (f"cd {q(layout.current)} && r=$(pwd -P) && "
            f'exec "$r/.venv/bin/python" "$r/.venv/bin/streamlit" {args}')


def program_command(app: App, layout: Layout, port: int | str) -> str:
    """The command line of one instance, for a supervisor program or a systemd unit's ExecStart
    (systemd: pass port="%i" in a template unit)."""
    return f"/bin/sh -c {q(inner_command(app, layout, port))}"


def manager_cmds(app: App, layout: Layout, port: int) -> dict[str, str]:
    """Shell snippets for one instance: pid (prints its pid), restart (stop + start; `$old` is the pid before),
    log (its last lines of output)."""
    s = settings(app)
    name = q(unit_name(s, port))
    if s.manager == "pidfile":
        pf = q(pidfile(layout, port))
        mark = q(f" --server.port {port} ")
        start = (f"setsid nohup {program_command(app, layout, port)} </dev/null >>{q(logfile(layout, port))} 2>&1 & "
                 f"echo $! > {pf}")
        return {
            # the pidfile's process, only if it really is this instance (a stale pidfile names a stranger)
            "pid": (f"p=$(cat {pf} 2>/dev/null); [ -n \"$p\" ] && tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null "
                    f"| grep -qF -- {mark} && echo $p"),
            "restart": f'if [ -n "$old" ]; then kill -TERM "$old"; wait_gone "$old" || kill -KILL "$old"; fi; {start}',
            "log": f"tail -n 15 {q(logfile(layout, port))}",
        }
    ctl = process_control.ctl(s.manager, s.sudo, s.supervisor_conf)
    if s.manager == "supervisor":
        return {"pid": f"{ctl} pid {name}", "restart": f"{ctl} restart {name} >/dev/null",
                "log": f"{ctl} tail {name} stderr | tail -n 15"}
    return {"pid": f"systemctl show -p MainPID --value {name}", "restart": f"{ctl} restart {name}",
            "log": f"{'sudo -n ' if s.sudo else ''}journalctl -u {name} -n 15 --no-pager"}


def health_curl(s: StreamlitSettings, port: int) -> str:
    """The shell command asking one instance's /_stcore/health (it prints "ok" when the server serves)."""
    return f"curl -s --max-time 2 {q(f'http://{local_address(s)}:{port}/_stcore/health')}"


SHELL_FNS = [
    process_control.ALIVE,
    'tree() { echo "$1"; for c in $(pgrep -P "$1"); do tree "$c"; done; }',
]


def restart_script(app: App, layout: Layout, inst: StreamlitInstance, release_id: str) -> str:
    """One round trip: restart the instance, wait until a NEW process runs from `release_id`
    (its /proc cwd) and answers /_stcore/health "ok" and GET / 200; prints SERVING <pid>."""
    s = settings(app)
    cmds = manager_cmds(app, layout, inst.port)
    limit = int(s.restart_timeout * 5)
    fail = (f'fail() {{ echo "instance {inst.port} does not serve release {release_id}: $why" >&2; '
            f"{{ {cmds['log']}; }} >&2 2>/dev/null; exit 1; }}")
    base = f"http://{local_address(s)}:{inst.port}"
    read_pid = f'p=$({{ {cmds["pid"]}; }} 2>/dev/null | tail -n 1); case "$p" in ""|0|*[!0-9]*) p=;; esac'
    return "\n".join([
        *SHELL_FNS,
        f'wait_gone() {{ j=0; while alive "$1" && [ $j -lt {limit} ]; do sleep 0.2; j=$((j+1)); done; ! alive "$1"; }}',
        f"want=$(cd {q(layout.release(release_id))} && pwd -P) || exit 1",
        fail,
        read_pid, 'old=$p; alive "$old" || old=',
        f"{cmds['restart']} || {{ why=\"{s.manager} could not (re)start it\"; fail; }}",
        f"end=$(($(date +%s) + {int(s.restart_timeout + 0.999)})); why=; seen=",
        "while :; do",
        f"  {read_pid}",
        # a new process seen once and then gone (or replaced by the manager's next try) crashed: stop waiting
        '  if [ -n "$seen" ] && [ "$p" != "$seen" ]; then why="its process $seen exited after starting"; break; fi',
        '  if ! alive "$p"; then why="no process"',
        '  elif [ "$p" = "$old" ]; then why="still the old process $p"',
        '  elif [ "$(readlink /proc/$p/cwd)" != "$want" ]; then why="process $p runs from $(readlink /proc/$p/cwd)"',
        f"  elif [ \"$({health_curl(s, inst.port)})\" != ok ]; then why=\"process $p: health not ok\"",
        f"  elif [ \"$(curl -s -o /dev/null --max-time 5 -w '%{{http_code}}' {q(base + '/')})\" != 200 ]; then",
        '    why="process $p: GET / not 200"',
        f"  elif ! s=$(curl -s --max-time {s.restart_timeout:g} {q(base + '/_stcore/script-health-check')}) "
        '|| [ "$s" != ok ]; then',
        '    why="process $p: the script fails when it runs (/_stcore/script-health-check: $s)"',
        '  else echo "SERVING $p"; exit 0; fi',
        '  if [ -z "$seen" ] && alive "$p" && [ "$p" != "$old" ]; then seen=$p; fi',
        f'  if [ "$(date +%s)" -ge "$end" ]; then why="after {s.restart_timeout:g} s: $why"; break; fi',
        "  sleep 0.2",
        "done",
        "fail",
    ])


def status_cmd(app: App, layout: Layout, health: bool = False) -> str:
    """Read-only, one round trip: `CLK <ticks/s> <epoch>`, `MEM <available kB> <total kB>`,
    `DISK <free kB> <size kB>`, and per instance `INST <port> <pid|-> <cwd|-> <rss kB> <cpu ticks>`
    (RSS and ticks summed over the process tree); `health`: per running instance also
    `HEALTH <port> <curl exit> <answer of /_stcore/health>`."""
    lines = [
        *SHELL_FNS,
        'echo "CLK $(getconf CLK_TCK) $(date +%s.%N)"',
        "echo \"MEM $(awk '/^MemAvailable:/{a=$2} /^MemTotal:/{t=$2} END{print a, t}' /proc/meminfo)\"",
        f"d={q(layout.root)}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done",
        "echo \"DISK $(df -Pk \"$d\" | awk 'NR==2 {print $4, $2}')\"",
    ]
    for inst in settings(app).instances:
        pid = manager_cmds(app, layout, inst.port)["pid"]
        lines += [
            f'p=$({{ {pid}; }} 2>/dev/null | tail -n 1); case "$p" in ""|0|*[!0-9]*) p=;; esac',
            'if alive "$p"; then rss=0; t=0; for c in $(tree "$p"); do',
            "  r=$(awk '/^VmRSS:/{print $2}' /proc/$c/status 2>/dev/null); rss=$((rss + ${r:-0}))",
            "  k=$(sed 's/.*) //' /proc/$c/stat 2>/dev/null | awk '{print $12 + $13}'); t=$((t + ${k:-0})); done",
            f'  echo "INST {inst.port} $p $(readlink /proc/$p/cwd) $rss $t"',
            *([f"  h=$({health_curl(settings(app), inst.port)}); "
               f"echo \"HEALTH {inst.port} $? $(printf %s \"$h\" | head -c 80 | tr -s '\\n\\t' '  ')\""]
              if health else []),
            f'else echo "INST {inst.port} - - 0 0"; fi',
        ]
    return "\n".join(lines)


@dataclass(frozen=True)
class InstanceStatus:
    port: int
    pid: int | None
    cwd: str
    rss_kb: int
    ticks: int
    health: str | None = None  # what /_stcore/health answered (status_cmd(health=True)); None: not asked

    def health_problem(self) -> str:
        """Why its /_stcore/health answer is not "ok" ("" when it is)."""
        if self.health == "ok":
            return ""
        return f"/_stcore/health answered {self.health!r}, not 'ok'" if self.health else "/_stcore/health did not answer"

    def runs(self, release_id: str) -> bool:
        """Its process works in releases/<release_id> (a real path from /proc)."""
        return self.pid is not None and self.cwd.rstrip("/").endswith(f"/releases/{release_id}")

    @property
    def release(self) -> str:
        return self.cwd.rstrip("/").rsplit("/", 1)[-1] if "/releases/" in self.cwd else ""


@dataclass(frozen=True)
class HostStatus:
    clk: int
    at: float
    mem_available_kb: int
    mem_total_kb: int
    disk_free_kb: int
    disk_total_kb: int
    instances: dict[int, InstanceStatus]


def parse_status(stdout: str) -> HostStatus:
    """The lines of `status_cmd` (missing numbers read as 0)."""
    def ints(parts: list[str], n: int) -> list[int]:
        out = []
        for p in (parts + ["0"] * n)[:n]:
            try:
                out.append(int(float(p)))
            except ValueError:
                out.append(0)
        return out

    clk, at, mem, disk, instances, health = 100, 0.0, [0, 0], [0, 0], {}, {}
    for line in stdout.splitlines():
        key, *parts = line.split() or [""]
        if key == "CLK" and len(parts) == 2:
            clk, at = int(parts[0]) or 100, float(parts[1])
        elif key == "MEM":
            mem = ints(parts, 2)
        elif key == "DISK":
            disk = ints(parts, 2)
        elif key == "INST" and len(parts) == 5:
            port, rss, ticks = int(parts[0]), *ints(parts[3:], 2)
            pid = int(parts[1]) if parts[1].isdigit() else None
            instances[port] = InstanceStatus(port, pid, parts[2] if pid else "", rss, ticks)
        elif key == "HEALTH" and len(parts) >= 2 and parts[0].isdigit():
            health[int(parts[0])] = " ".join(parts[2:]) if parts[1] == "0" else ""
    for port, answer in health.items():
        if port in instances:
            instances[port] = dataclasses.replace(instances[port], health=answer)
    return HostStatus(clk, at, mem[0], mem[1], disk[0], disk[1], instances)
