"""The streamlit stack: pure builders, then real Streamlit (from PyPI, via a wheelhouse) as three
supervisor programs (1 staging + 2 primaries) on a real sshd host, behind a real nginx whose
upstream shipfab drains one primary at a time, with websocket proxying for /_stcore/stream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from fabfile.errors import InventoryError
from fabfile.inventory import StreamlitInstance, WatchSettings, fill_sandbox_port, load_inventory, parse_inventory
from fabfile.layout import Layout
from fabfile.managers import streamlit as manager
from fabfile.probes import watch as watcher
from fabfile.stacks.streamlit import short_state
from fabfile.streamlit_tasks import notes

from .conftest import FAB, REPO, git, inv_health
from .services import LoadGenerator, Nginx, Sshd, Supervisord, free_port, make_ssh_keys

EXAMPLE = REPO / "examples" / "streamlitapp"


# ---------------------------------------------------------------- pure parts


def _app_raw(**streamlit):
    return {"apps": {"dash": {"stack": "streamlit", "deploy_to": "/srv/dash", "streamlit": {
        "script": "app.py", "instances": [{"port": 8501}, {"port": 8504, "role": "staging"}], **streamlit}}},
        "hosts": {"h": {"hostname": "h1", "app": "dash"}}}


def _app(**streamlit):
    return parse_inventory(_app_raw(**streamlit), Path("hosts.toml")).targets["h"].app


def test_settings_instances_options_and_defaults():
    app = _app(options={"server.maxUploadSize": 200, "server.enableCORS": False}, manager="supervisor")
    s = app.streamlit
    assert [(i.port, i.role) for i in s.instances] == [(8501, "primary"), (8504, "staging")]
    assert s.program == "dash" and s.address == "127.0.0.1" and s.watch.seconds == 60
    assert s.watch.max_cpu_percent == 50 and s.watch.max_memory_mb == 1000
    assert s.options == (("server.maxUploadSize", "200"), ("server.enableCORS", "false"))


@pytest.mark.parametrize("bad, words", [
    ({"script": ""}, "missing required key"),
    ({"script": "../x.py"}, "inside the release"),
    ({"instances": [{"port": 8504, "role": "staging"}]}, "role = \"primary\""),
    ({"instances": [{"port": 8501, "role": "canary"}]}, "unknown value"),
    ({"instances": [{"port": 8501}, {"port": 8501}]}, "given twice"),
    ({"instances": [{"port": 0}]}, "a TCP port"),
    ({"options": {"server.port": 1}}, "set by shipfab"),
    ({"options": {"--x; rm": 1}}, "not a streamlit option"),
    ({"manager": "docker"}, "unknown value"),
    ({"instances": [{"port": "{sandbox_port}"}]}, "only for a local"),
])
def test_settings_refused_with_the_key_path(bad, words):
    with pytest.raises(InventoryError) as err:
        _app(**bad)
    assert "apps.dash.streamlit" in str(err.value) and words in str(err.value)


def test_sandbox_port_plus_n_fills_several_ports():
    assert fill_sandbox_port("{sandbox_port}", 20100) == "20100"
    assert fill_sandbox_port("127.0.0.1:{sandbox_port+1}", 20100) == "127.0.0.1:20101"
    assert fill_sandbox_port("{sandbox_port+12}/{sandbox_port}", 20100) == "20112/20100"
    raw = _app_raw(instances=[{"port": "{sandbox_port}"}, {"port": "{sandbox_port+1}", "role": "staging"}])
    raw["hosts"] = {"l": {"local": True, "app": "dash"}}
    raw["apps"]["dash"]["deploy_to"] = ".sandbox/dash"
    s = parse_inventory(raw, Path("/tmp/x/hosts.toml")).targets["l"].app.streamlit
    assert s.instances[1].port == s.instances[0].port + 1 and 20000 <= s.instances[0].port < 30000


def test_commands_quote_and_run_from_the_resolved_release():
    app = _app(manager="supervisor", supervisor_conf="/etc/sup d.conf", options={"theme.base": "dark; rm -rf /"})
    layout = Layout("/srv/my dash")
    cmd = manager.program_command(app, layout, 8501)
    inner = manager.inner_command(app, layout, 8501)
    assert cmd == "/bin/sh -c " + manager.q(inner)
    assert inner.startswith("cd '/srv/my dash/current' && r=$(pwd -P) && exec \"$r/.venv/bin/python\"")
    assert "run app.py --server.port 8501 --server.address 127.0.0.1" in inner
    assert "--theme.base 'dark; rm -rf /'" in inner and "--server.scriptHealthCheckEnabled true" in inner
    cmds = manager.manager_cmds(app, layout, 8504)
    assert cmds["pid"] == "supervisorctl -c '/etc/sup d.conf' pid dash-8504"
    assert manager.unit_name(replace(app.streamlit, manager="systemd"), 8504) == "dash@8504"
    script = manager.restart_script(app, layout, app.streamlit.instances[0], "20260101T000000Z")
    assert "want=$(cd '/srv/my dash/releases/20260101T000000Z' && pwd -P)" in script
    assert 'readlink /proc/$p/cwd)" != "$want"' in script
    for url in ("http://127.0.0.1:8501/_stcore/health", "http://127.0.0.1:8501/", "/_stcore/script-health-check"):
        assert url in script
    pidf = manager.manager_cmds(_app(), layout, 8501)
    assert "setsid nohup /bin/sh -c" in pidf["restart"] and "'/srv/my dash/shared/streamlit-8501.pid'" in pidf["restart"]


@pytest.mark.parametrize("mgr", ["pidfile", "supervisor", "systemd"])
def test_generated_scripts_are_valid_shell(mgr):
    app = _app(manager=mgr, sudo=True)
    layout = Layout("/srv/d")
    for script in (manager.restart_script(app, layout, app.streamlit.instances[1], "20260101T000000Z"),
                   manager.status_cmd(app, layout), manager.status_cmd(app, layout, health=True)):
        res = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_parse_status_and_release_of_an_instance():
    out = ("CLK 100 1000.5\nMEM 2048000 4096000\nDISK 500000 1000000\n"
           "INST 8501 42 /srv/dash/releases/20260101T000000Z 51200 300\nINST 8504 - - 0 0\n")
    st = manager.parse_status(out)
    assert st.clk == 100 and st.mem_available_kb == 2048000 and st.disk_total_kb == 1000000
    assert st.instances[8501].runs("20260101T000000Z") and st.instances[8501].release == "20260101T000000Z"
    assert not st.instances[8504].runs("20260101T000000Z") and st.instances[8504].pid is None
    assert st.instances[8501].health is None  # not asked
    asked = manager.parse_status(out + "HEALTH 8501 0 ok\n")
    assert asked.instances[8501].health == "ok" and asked.instances[8501].health_problem() == ""
    refused = manager.parse_status(out + "HEALTH 8501 7 \n").instances[8501]
    assert refused.health == "" and refused.health_problem() == "/_stcore/health did not answer"
    odd = manager.parse_status(out + "HEALTH 8501 0 <html> oops\n").instances[8501]
    assert odd.health_problem() == "/_stcore/health answered '<html> oops', not 'ok'"


def _st(at: float, **inst: tuple[int | None, int, int]) -> manager.HostStatus:
    return manager.HostStatus(100, at, 0, 0, 0, 0, {int(k[1:]): manager.InstanceStatus(int(k[1:]), pid, "/r", rss, t)
                                                    for k, (pid, rss, t) in inst.items()})


def test_watch_judges_memory_each_sample_cpu_on_average_and_death():
    limits = WatchSettings(seconds=10, max_cpu_percent=50, max_memory_mb=100, interval=1)
    insts = (StreamlitInstance(8501, "primary"),)
    first = _st(0, p8501=(7, 50 * 1024, 0))
    assert watcher.problem(insts, limits, first, _st(2, p8501=(7, 60 * 1024, 150)), final=False) is None
    assert "75.0 % CPU on average, limit 50 %" in watcher.problem(insts, limits, first, _st(2, p8501=(7, 1, 150)), True)
    assert "uses 200 MiB of memory (RSS), limit 100 MiB" in watcher.problem(
        insts, limits, first, _st(1, p8501=(7, 200 * 1024, 0)), final=False)
    assert "died" in watcher.problem(insts, limits, first, _st(1, p8501=(None, 0, 0)), final=False)
    assert "restarted" in watcher.problem(insts, limits, first, _st(1, p8501=(8, 1, 0)), final=False)


def test_notes_are_the_short_form_of_the_log_entry():
    state = {"instances": [{"port": 8501, "pid": 3, "rss_mb": 61.2}, {"port": 8504, "pid": None, "rss_mb": 0}],
             "mem_available_mb": 3100, "disk_free_percent": 41.0}
    assert short_state(state) == ":8501 up 61M, :8504 down; mem 3100M free; disk 41.0% free"
    assert notes({"kind": "schema", "message": "new fields", "state_after": state}).startswith(
        "[schema] new fields after: :8501 up 61M")


# ---------------------------------------------------------------- the rig

APP_V1 = (EXAMPLE / "app.py").read_text()
CRASH = APP_V1.replace("import streamlit as st\n", "import streamlit as st\n\nraise RuntimeError('boom at import')\n")
HOG = APP_V1 + '''

@st.cache_resource
def ballast():
    return b"x" * (300 * 2**20)  # a leak: 300 MiB kept by the server process


st.write(len(ballast()))
'''
BAD_CONFIG = '[server]\nsslCertFile = "missing.pem"\nsslKeyFile = "missing.pem"\n'


def make_wheels(wheels: Path) -> Path:
    """Streamlit and its dependencies as wheels, once: the host's venv build runs offline."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(wheels),
                    "-r", str(EXAMPLE / "requirements.txt")], check=True)
    return wheels


@pytest.fixture(scope="module")
def st_wheels(tmp_path_factory) -> Path:
    return make_wheels(tmp_path_factory.mktemp("stwheels"))


def make_repo(repo: Path) -> Path:
    """examples/streamlitapp with tags v1, v2, and from v2: badconfig (the server cannot start),
    crash (raises at import), hog (keeps 300 MiB)."""
    for name in ("app.py", "schema.json", "requirements.txt"):
        shutil.copy(EXAMPLE / name, repo / name)
    git(repo, "init", "-q", "-b", "main")

    def commit(tag: str, files: dict[str, str]) -> None:
        for name, text in files.items():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_text(text)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", tag)
        git(repo, "tag", tag)

    commit("v1", {"VERSION": "v1\n"})
    commit("v2", {"VERSION": "v2\n"})
    for tag, files in {"badconfig": {".streamlit/config.toml": BAD_CONFIG}, "crash": {"app.py": CRASH},
                       "hog": {"app.py": HOG}}.items():
        commit(tag, files)
        git(repo, "reset", "-q", "--hard", "v2")
    return repo


@pytest.fixture(scope="module")
def st_repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("strepo"))


class WsNginx(Nginx):
    """The test nginx, plus websocket proxying for Streamlit's /_stcore/stream."""

    def _render(self) -> str:
        stream = """location /_stcore/stream {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 86400;
        }

        location / {"""
        return super()._render().replace("location / {", stream, 1)


@dataclass
class Rig:
    tmp: Path
    sshd: Sshd
    deploy_to: Path
    staging: int
    primaries: list[int]
    inventory: Path
    supervisord: Supervisord | None = None
    nginx: Nginx | None = None

    def fab(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SHIPFAB_HOSTS": str(self.inventory)}
        return subprocess.run([*FAB, "-r", str(REPO), *args], capture_output=True, text=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.tmp)

    @property
    def ports(self) -> list[int]:
        return [self.staging, *self.primaries]

    def pid(self, port: int) -> int | None:
        assert self.supervisord is not None
        out = self.supervisord.ctl("pid", f"dash-{port}").stdout.strip()
        return int(out) if out.isdigit() and out != "0" else None

    def runs_from(self, port: int) -> str:
        """The release directory the instance's process works in (/proc/PID/cwd)."""
        pid = self.pid(port)
        return os.readlink(f"/proc/{pid}/cwd").rsplit("/", 1)[-1] if pid else ""

    def current(self) -> str:
        return os.readlink(self.deploy_to / "current").rsplit("/", 1)[-1]

    def log(self) -> list[dict]:
        path = self.deploy_to / ".shipfab" / "releases.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def _write_inventory(rig: Rig, keys, wheels: Path, repo: Path, watch_seconds: float = 3) -> None:
    sup = f'supervisor_conf = "{rig.supervisord.conf}"' if rig.supervisord else ""
    nginx = "\n".join(f"{k} = {json.dumps(v)}" for k, v in rig.nginx.settings().items()) if rig.nginx else ""
    instances = ", ".join([f'{{ port = {rig.staging}, role = "staging" }}',
                           *(f'{{ port = {p}, role = "primary" }}' for p in rig.primaries)])
    rig.inventory.write_text(f"""
default = "st"
[defaults]
known_hosts = "{rig.tmp / 'known_hosts'}"
key_filename = "{keys.client_key}"
[apps.dash]
stack = "streamlit"
deploy_to = "{rig.deploy_to}"
checkout = "{repo}"
branch = "v1"
wheelhouse = "{wheels}"
shared_dirs = ["logs"]
[apps.dash.streamlit]
script = "app.py"
manager = "supervisor"
program = "dash"
{sup}
instances = [{instances}]
restart_timeout = 20
[apps.dash.watch]
seconds = {watch_seconds}
interval = 1
max_memory_mb = 250
max_cpu_percent = 95
[apps.dash.nginx]
{nginx}
[hosts.st]
hostname = "{rig.sshd.hostname}"
port = {rig.sshd.port}
user = "{rig.sshd.user}"
app = "dash"
""")


def start_rig(tmp: Path, wheels: Path, repo: Path, watch_seconds: float = 3) -> Rig:
    """sshd + nginx (websockets) + supervisord with one program per instance; `stop_rig` ends them."""
    keys = make_ssh_keys(tmp / "keys")
    sshd = Sshd.start(tmp / "sshd", keys)
    (tmp / "known_hosts").write_text(sshd.known_hosts.read_text())
    r = Rig(tmp, sshd, tmp / "srv" / "dash", free_port(), [free_port(), free_port()], tmp / "hosts.toml")
    try:
        r.nginx = WsNginx.start(tmp / "nginx", [f"127.0.0.1:{p}" for p in r.primaries],
                                upstream_file=tmp / "nginx" / "dash-upstream.conf")
        _write_inventory(r, keys, wheels, repo, watch_seconds)
        app = load_inventory(r.inventory).targets["st"].app
        programs = {f"dash-{p}": {"command": manager.program_command(app, Layout(str(r.deploy_to)), p)} for p in r.ports}
        r.supervisord = Supervisord.start(tmp / "supervisor", programs)
        _write_inventory(r, keys, wheels, repo, watch_seconds)
    except BaseException:
        stop_rig(r)
        raise
    return r


def stop_rig(r: Rig) -> None:
    for svc in (r.supervisord, r.nginx, r.sshd):
        if svc is not None:
            svc.stop()


@pytest.fixture(scope="module")
def rig(tmp_path_factory, st_wheels, st_repo):
    r = start_rig(tmp_path_factory.mktemp("strig"), st_wheels, st_repo)
    try:
        yield r
    finally:
        stop_rig(r)


@pytest.fixture
def deployed(rig):
    """The rig with a release serving (whatever ran before on this worker: xdist splits a module)."""
    if not (rig.deploy_to / "current").exists():
        res = rig.fab("deploy")
        assert res.returncode == 0, res.stdout + res.stderr
    return rig


def _websocket_upgrade(url: str) -> str:
    """The status line nginx answers to a websocket handshake on /_stcore/stream."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /_stcore/stream HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Protocol: streamlit, xsrf\r\n\r\n")
        return sock.recv(4096).decode("latin-1").splitlines()[0]


# ---------------------------------------------------------------- against real Streamlit


def test_deploy_redeploy_rollback_staged_and_rolling_with_zero_failed_requests(rig):
    first = rig.fab("deploy", "--kind", "schema", "--message", "first release")
    assert first.returncode == 0, first.stdout + first.stderr
    rel1 = rig.current()
    assert [rig.runs_from(p) for p in rig.ports] == [rel1] * 3
    assert _websocket_upgrade(rig.nginx.url).startswith("HTTP/1.1 101")

    before = {p: rig.pid(p) for p in rig.ports}
    with LoadGenerator(rig.nginx.url + "/", rate=20) as load:
        second = rig.fab("deploy", "--ref", "v2", "-v")
        rel2 = rig.current()
        on_v2 = [rig.runs_from(p) for p in rig.ports]
        back = rig.fab("rollback")
        result = load.stop()
    assert second.returncode == 0, second.stdout + second.stderr
    assert back.returncode == 0, back.stdout + back.stderr
    assert result.failed == 0 and result.total > 40, result.failures
    assert on_v2 == [rel2] * 3 and rel2 != rel1
    assert all(rig.pid(p) != before[p] for p in rig.ports)
    assert [rig.runs_from(p) for p in rig.ports] == [rel1] * 3 and rig.current() == rel1
    # staging first, then each primary drained (down), restarted, put back
    line = next(x for x in second.stdout.splitlines() if "restart_instances" in x and " ok " in x)
    assert line.index(f":{rig.staging} ") < line.index(f":{rig.primaries[0]} ") < line.index(f":{rig.primaries[1]} ")
    assert "drained one at a time" in line
    assert f"server 127.0.0.1:{rig.primaries[0]} down;" in second.stdout  # -v shows the drained upstream published
    assert "down" not in (rig.tmp / "nginx" / "dash-upstream.conf").read_text()

    entries = {e["release"]: e for e in rig.log() if e.get("event") == "deploy"}
    assert entries[rel1]["kind"] == "schema" and entries[rel1]["message"] == "first release"
    after = entries[rel2]["state_after"]
    assert [i["port"] for i in after["instances"]] == rig.ports
    assert all(i["release"] == rel2 and i["pid"] and i["rss_mb"] > 10 for i in after["instances"])
    assert [i["release"] for i in entries[rel2]["state_before"]["instances"]] == [rel1] * 3
    assert after["mem_available_mb"] > 0 and after["disk_free_mb"] > 0
    shown = rig.fab("releases").stdout
    assert "[schema] first release" in shown and f":{rig.staging} up" in shown


def test_a_release_failing_on_staging_never_reaches_a_primary(deployed):
    rig = deployed
    current = rig.current()
    primaries = {p: rig.pid(p) for p in rig.primaries}
    res = rig.fab("deploy", "--ref", "badconfig")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"staging instance {rig.staging} did not serve release" in res.stdout
    assert {p: rig.pid(p) for p in rig.primaries} == primaries  # never touched
    assert rig.current() == current and rig.runs_from(rig.staging) == current  # staging back on the previous
    assert rig.log()[-1]["status"] == "failed"


def test_a_crash_at_import_stops_at_the_boot_check(deployed):
    rig = deployed
    pids = {p: rig.pid(p) for p in rig.ports}
    res = rig.fab("deploy", "--ref", "crash")
    assert res.returncode == 1
    assert "boot_check      FAILED" in res.stdout and "boom at import" in res.stdout
    assert {p: rig.pid(p) for p in rig.ports} == pids


def test_a_watch_breach_rolls_every_instance_back(deployed):
    rig = deployed
    current = rig.current()
    res = rig.fab("deploy", "--ref", "hog")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "watch           FAILED" in res.stdout
    assert "MiB of memory (RSS), limit 250 MiB" in res.stdout and f"instance {rig.staging} (staging)" in res.stdout
    assert rig.current() == current and [rig.runs_from(p) for p in rig.ports] == [current] * 3
    assert rig.log()[-1]["status"] == "failed" and "limit 250 MiB" in rig.log()[-1]["reason"]
    alone = rig.fab("watch", "--seconds", "2")
    assert alone.returncode == 0 and "within limits" in alone.stdout


def _serves(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
            return resp.read() == b"ok"
    except OSError:
        return False


def test_inv_health_and_health_check_judge_every_instance_on_current(deployed):
    """Healthy = every instance (staging too) has a process working in `current` whose /_stcore/health says ok;
    a stopped primary and a frozen staging instance (alive, on current, not answering) are both named."""
    rig = deployed
    current = rig.current()
    inv = inv_health(rig.inventory, rig.tmp)
    assert inv.returncode == 0, inv.stdout + inv.stderr
    row = next(line for line in inv.stdout.splitlines() if line.startswith("st "))
    assert current in row and " healthy " in row and f"3 instance(s) on {current}, /_stcore/health ok" in row, row
    check = rig.fab("health-check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"healthy: 3 instance(s) on {current}, /_stcore/health ok (:{rig.staging} pid {rig.pid(rig.staging)}" \
        in check.stdout

    stopped, frozen = rig.primaries[1], rig.pid(rig.staging)
    assert frozen is not None
    rig.supervisord.ctl("stop", f"dash-{stopped}")
    os.kill(frozen, signal.SIGSTOP)
    try:
        inv = inv_health(rig.inventory, rig.tmp)
        check = rig.fab("health-check")
    finally:
        os.kill(frozen, signal.SIGCONT)
        rig.supervisord.ctl("start", f"dash-{stopped}")
    assert inv.returncode == 1, inv.stdout + inv.stderr
    row = next(line for line in inv.stdout.splitlines() if line.startswith("st "))
    assert " UNHEALTHY " in row and f"staging instance {rig.staging}: pid {frozen}: /_stcore/health did not answer" \
        in row and f"primary instance {stopped}: no process" in row, row
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"primary instance {stopped}: no process" in check.stdout + check.stderr
    deadline = time.monotonic() + 60
    while not (_serves(stopped) and _serves(rig.staging)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rig.runs_from(stopped) == current and rig.runs_from(rig.staging) == current
    assert inv_health(rig.inventory, rig.tmp).returncode == 0  # back as the other tests expect it
