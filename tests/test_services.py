"""Tests for the real-service helpers in tests/services.py (no mocks)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fabric
import pytest
import requests

from .services import (
    LoadGenerator,
    Nginx,
    Sshd,
    Supervisord,
    descendants,
    free_port,
    make_ssh_keys,
    port_open,
    wait_for_port,
)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    workdir = tmp_path_factory.mktemp("sshd")
    with Sshd.start(workdir, make_ssh_keys(workdir / "keys")) as server:
        yield server
    assert server.proc is not None and server.proc.poll() is not None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_free_port_and_wait_for_port_timeout() -> None:
    port = free_port()
    assert 1024 < port < 65536 and port != 22
    with pytest.raises(TimeoutError):
        wait_for_port(port, timeout=0.2)


def test_sshd_key_login_and_sftp(sshd: Sshd, tmp_path: Path) -> None:
    assert sshd.port != 22
    with fabric.Connection(
        sshd.hostname,
        port=sshd.port,
        user=sshd.user,
        connect_kwargs={"key_filename": sshd.key_filename},
    ) as conn:
        assert conn.run("echo hi", hide=True, in_stream=False).stdout == "hi\n"

    # Strict host-key checking against the generated known_hosts, plus sftp.
    local = tmp_path / "payload.txt"
    local.write_text("payload\n")
    remote = tmp_path / "uploaded.txt"
    assert sshd.known_hosts.read_text().startswith(f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
    with sshd.connection() as conn:
        conn.put(str(local), str(remote))
    assert remote.read_text() == "payload\n"


def test_kill_sessions_drops_in_flight_command(sshd: Sshd) -> None:
    assert sshd.proc is not None
    outcome: dict[str, object] = {}

    def run_sleep() -> None:
        try:
            with sshd.connection() as conn:
                outcome["result"] = conn.run("sleep 30", hide=True, in_stream=False)
        except Exception as exc:  # noqa: BLE001 - the failure is what we test
            outcome["error"] = exc

    thread = threading.Thread(target=run_sleep, daemon=True)
    thread.start()
    # Match the real `sleep` process, not `bash -c "sleep 30"` still starting up.
    _wait_until(lambda: any(_cmdline(p) == "sleep 30 " for p in descendants(sshd.proc.pid)))

    started = time.monotonic()
    killed = sshd.kill_sessions()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert killed >= 2  # the session's sshd and the remote `sleep`
    assert "error" in outcome, outcome
    assert not any("sleep" in _cmdline(p) for p in descendants(sshd.proc.pid))

    # The listener survived: a re-run can reconnect.
    assert sshd.proc.poll() is None
    with sshd.connection() as conn:
        assert conn.run("echo back", hide=True, in_stream=False).stdout == "back\n"


def test_supervisord_starts_and_stops_program(tmp_path: Path) -> None:
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("from supervisor\n")
    programs = {
        "web": {
            "command": f"{sys.executable} -m http.server {port} --bind 127.0.0.1",
            "directory": str(www),
            "environment": {"SHIPFAB_TEST": "1"},
        }
    }
    with Supervisord.start(tmp_path / "sv", programs) as sv:
        assert sv.conf.is_file()
        assert not port_open(port)  # autostart defaults to False
        started = sv.ctl("start", "web")
        assert started.returncode == 0, started.stdout + started.stderr
        wait_for_port(port, timeout=5)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).text == "from supervisor\n"
        assert "RUNNING" in sv.ctl("status", "web").stdout
        pid = int(sv.ctl("pid", "web").stdout)
        assert "SHIPFAB_TEST=1" in Path(f"/proc/{pid}/environ").read_bytes().decode()

    assert sv.proc is not None and sv.proc.poll() is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not port_open(port)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A tiny python http.server standing in for the app server."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from upstream\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=www,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


def test_nginx_proxy_with_load_generator(tmp_path: Path, upstream: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = upstream
    with Nginx.start(tmp_path / "nginx", f"127.0.0.1:{port}") as nginx:
        assert nginx.url == f"http://127.0.0.1:{nginx.port}"

        load = LoadGenerator(nginx.url, rate=50).start()
        time.sleep(1.0)
        healthy = load.stop()
        assert healthy.total >= 20
        assert healthy.failed == 0, healthy.failures
        assert healthy.bodies == {"hello from upstream": healthy.total}

        proc.terminate()
        proc.wait(5)
        with LoadGenerator(nginx.url, rate=50) as load:
            time.sleep(0.5)
        broken = load.result()
        assert broken.total >= 5
        assert broken.failed == broken.total
        assert 1 <= len(broken.failures) <= 10
        assert "HTTP 502" in broken.failures[0]

    assert nginx.proc is not None and nginx.proc.poll() is not None
    assert not port_open(nginx.port)


def test_load_generator_only_targets_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoadGenerator("http://example.com/")
