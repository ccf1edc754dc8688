"""The one runner of remote commands, over a real sshd: exit status, output, timeouts and a
cut link all end a command's wait (it waits on paramiko's exit-status event, not a 10 ms poll)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import subprocess
import threading
import time

import pytest
from invoke.exceptions import CommandTimedOut

from fabfile.inventory import load_inventory
from fabfile.output import Printer
from fabfile.remote import ConnectionLost, Remote, Unreachable, _config, _LinkSocket, _Runner

from .services import descendants


@pytest.fixture
def remote(world):
    host = world.add_host("web1", manager="pidfile")
    r = Remote(load_inventory(world.inventory).targets["web1"], Printer(verbosity=0))
    yield r, host
    r.close()


def test_exit_status_output_and_back_to_back_commands(remote) -> None:
    r, _ = remote
    assert r.conn.config.runners.remote is _Runner
    res = r.run("printf out; printf err >&2; exit 3", change=False, warn=True)
    assert (res.exited, res.stdout, res.stderr) == (3, "out", "err")
    # All output written before the exit status arrives is there, command after command.
    outs = [r.run(f"seq 1 2000; echo end-{i}", change=False).stdout for i in range(20)]
    assert all(out.splitlines()[-1] == f"end-{i}" and len(out.splitlines()) == 2001 for i, out in enumerate(outs))


def test_large_non_ascii_output_arrives_whole(remote) -> None:
    r, _ = remote
    out = r.run("for i in $(seq 1 4000); do printf 'é€😀%.0s' 1 2 3 4 5 6 7 8 9 10; echo; done", change=False).stdout
    lines = out.splitlines()
    assert len(lines) == 4000 and set(lines) == {"é€😀" * 10}  # 360 KB: characters split between reads stay whole


def test_stdin_arrives_whole_and_ends(remote) -> None:
    r, _ = remote
    data = "".join(f"line {i}\n" for i in range(20000))
    assert r.run("sha256sum", change=False, stdin=data).stdout.split()[0] == hashlib.sha256(data.encode()).hexdigest()
    assert r.run("cat", change=False, stdin="").stdout == ""


def test_a_timeout_ends_the_wait(remote) -> None:
    r, _ = remote
    with pytest.raises(CommandTimedOut):
        r.conn.run("sleep 30", hide=True, timeout=1)
    assert r.run("echo still usable", change=False).stdout == "still usable\n"


def test_a_cut_link_ends_the_wait_as_connection_lost(remote) -> None:
    r, host = remote
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            r.run("sleep 30", change=False)
        except BaseException as exc:  # noqa: BLE001 - the failure is what is tested
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not any(_cmdline(p) == "sleep 30 " for p in descendants(host.sshd.proc.pid)):
        assert time.monotonic() < deadline, "the remote sleep never started"
        time.sleep(0.05)
    host.sshd.kill_sessions()
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), ConnectionLost), outcome


def test_the_link_is_tuned_from_the_first_byte(remote) -> None:
    """The socket paramiko runs the handshake on is shipfab's: Nagle off, quick ACKs (bench/:
    connect + first command 121 -> 31 ms; with the defaults two ~40 ms delayed ACKs)."""
    r, _ = remote
    assert r.run("echo ok", change=False).stdout == "ok\n"
    sock = r.conn.transport.sock
    assert type(sock) is _LinkSocket
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux only")
def test_every_read_of_the_link_asks_for_quick_acks() -> None:
    """Request, then two small answers in a row (what sshd sends after its login notice): after
    each read the link is in quick ACK mode; a plain socket (the control) falls back to delayed ACKs."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        seen = {}
        for name, connect in (("link", lambda: _LinkSocket.dial("127.0.0.1", port, 5)),
                              ("plain", lambda: socket.create_connection(("127.0.0.1", port), 5))):
            client = connect()
            peer, _ = server.accept()
            with client, peer:
                modes = []
                for _ in range(5):
                    client.sendall(b"request")
                    peer.recv(100)
                    peer.sendall(b"answer-1")
                    peer.sendall(b"answer-2")
                    client.recv(100)
                    modes.append(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
            seen[name] = modes
    assert seen["link"] == [1] * 5
    assert seen["plain"][1:] == [0] * 4  # the check can fail: without the tuning it reads 0


def test_a_failed_connect_names_the_address_and_leaves_no_socket_open(world, tmp_path) -> None:
    host = world.add_host("web1", manager="pidfile")
    target = load_inventory(world.inventory).targets["web1"]
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused_port = closed.getsockname()[1]
    cases = [
        (dataclasses.replace(target, port=refused_port), f"web1: cannot connect to 127.0.0.1:{refused_port}: Connection refused"),
        (dataclasses.replace(target, key_filename=str(stranger)),
         f"web1: cannot connect to 127.0.0.1:{host.sshd.port}: Authentication failed."),
    ]
    sockets = _open_sockets()
    for bad, message in cases:
        for _ in range(3):
            r = Remote(bad, Printer(verbosity=0))
            with pytest.raises(Unreachable) as failed:
                r.run("true", change=False)
            assert str(failed.value) == message
    assert _open_sockets() <= sockets  # each failed attempt closed its socket


def _open_sockets() -> set[str]:
    """This process's open sockets ("socket:[inode]")."""
    links = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the fd listdir itself used, closed by now
            pass
    return {link for link in links if link.startswith("socket:")}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode()
    except OSError:  # gone (FileNotFoundError), or exiting right now (ProcessLookupError)
        return ""


def test_the_config_root_answers_invokes_lookups_and_still_tracks_changes() -> None:
    config = _config({"run": {"in_stream": False}})
    # What invoke asks with hasattr() on every `config.run`: present, so no AttributeError is built.
    assert object.__getattribute__(config, "_keypath") == ()
    assert object.__getattribute__(config, "_root") is config
    assert config.run.in_stream is False
    config.run.warn = True  # a change through a nested level still reaches the root (a clone keeps it)
    assert config.clone().run.warn is True
