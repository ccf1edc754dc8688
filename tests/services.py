"""Real throw-away services for integration tests.

Every service listens on a free 127.0.0.1 port, keeps all of its files
(config, pid file, logs, sockets, temp dirs) under a caller-supplied work
directory and is stopped by the PID this module started.  Nothing here
touches system services, system config files or port 22.

All service classes are context managers, and anything still running when
the interpreter exits is stopped by an ``atexit`` hook as a last resort.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import ipaddress
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

SSHD = "/usr/sbin/sshd"  # sshd must be started by absolute path (it re-execs)
LOOPBACK = "127.0.0.1"

#: Environment for sessions on the test sshd.  bash sources ~/.bashrc for
#: non-interactive sshd sessions only when it is a top-level shell, so
#: SHLVL=1 skips it: root's .bashrc here runs `pyenv init -`, whose
#: `pyenv rehash` takes a lock file that a SIGKILLed session (see
#: Sshd.kill_sessions) leaves behind, making every later login wait 60 s.
#: PATH puts this interpreter's bin dir (python, gunicorn, pip) first, like
#: the pyenv shims would.
DEFAULT_SESSION_ENV: dict[str, str] = {
    "SHLVL": "1",
    "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}


# --------------------------------------------------------------------------
# ports and processes
# --------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def http_backend(body: str) -> tuple[ThreadingHTTPServer, str]:
    """A real HTTP server on loopback answering every GET with 200 and `body`, in a thread;
    returns it (`shutdown()` it) and its "127.0.0.1:port"."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body.encode())))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"{LOOPBACK}:{server.server_port}"


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(
    port: int,
    timeout: float = 10.0,
    host: str = LOOPBACK,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Block until host:port accepts connections.

    Raises TimeoutError after ``timeout`` seconds, or RuntimeError at once
    if ``proc`` (the process expected to listen) has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_open(port, host):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
        time.sleep(0.05)


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime) of a live process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may contain spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # zombie / dead: nothing left to kill
        return None
    return int(fields[1]), int(fields[19])


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (scans /proc; the per-task ``children``
    files need CONFIG_PROC_CHILDREN, which not every kernel has)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[0] == pid:
                found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    """All descendants of ``pid``, parents before their children."""
    result: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop(0))
        result.extend(kids)
        todo.extend(kids)
    return result


@dataclass(frozen=True)
class _ProcId:
    """A pid plus its start time, so a recycled pid is never signalled."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> _ProcId | None:
        stat = _proc_stat(pid)
        return None if stat is None else cls(pid, stat[1])

    def alive(self) -> bool:
        stat = _proc_stat(self.pid)
        return stat is not None and stat[1] == self.start

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        if not self.alive():
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True


def _snapshot_tree(pid: int) -> list[_ProcId]:
    ids = (_ProcId.of(p) for p in descendants(pid))
    return [i for i in ids if i is not None]


def _kill_all(procs: Sequence[_ProcId], timeout: float = 5.0) -> int:
    """SIGKILL every process in ``procs`` that is still alive; wait for them."""
    killed = sum(p.kill() for p in procs)
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    return killed


def _terminate(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig`` to ``proc``, wait, SIGKILL if needed, then SIGKILL any
    descendants that outlived it (snapshotted before signalling)."""
    tree = _snapshot_tree(proc.pid)
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    _kill_all(tree)


def _run(args: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        stdin=subprocess.DEVNULL,  # an inherited, never-closing stdin hangs ssh
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --------------------------------------------------------------------------
# common base
# --------------------------------------------------------------------------

_live: set[_Service] = set()
_live_lock = threading.Lock()


class _Service:
    """Context-manager plumbing plus an atexit safety net."""

    def _register(self) -> None:
        with _live_lock:
            _live.add(self)

    def _unregister(self) -> None:
        with _live_lock:
            _live.discard(self)

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_everything() -> None:
    with _live_lock:
        services = list(_live)
    for service in services:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            service.stop()


# --------------------------------------------------------------------------
# sshd
# --------------------------------------------------------------------------


@dataclass
class SshKeys:
    """A client key pair (no passphrase) and an sshd host key, all ed25519."""

    client_key: Path
    client_pub: Path
    host_key: Path

    @property
    def host_pub(self) -> Path:
        return self.host_key.with_name(self.host_key.name + ".pub")


def _keygen(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "shipfab-test",
            "-f",
            str(path),
        ],
        check=True,
        capture_output=True,
    )


def make_ssh_keys(directory: Path) -> SshKeys:
    """Generate a client key pair and a host key in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    client, host = directory / "id_ed25519", directory / "ssh_host_ed25519_key"
    _keygen(client)
    _keygen(host)
    return SshKeys(client, client.with_name(client.name + ".pub"), host)


class Sshd(_Service):
    """A private sshd on 127.0.0.1 that accepts ``keys.client_key``."""

    hostname = LOOPBACK

    def __init__(
        self,
        workdir: Path,
        keys: SshKeys,
        port: int,
        session_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.keys = keys
        self.port = port
        self.session_env = DEFAULT_SESSION_ENV if session_env is None else session_env
        self.user = getpass.getuser()
        self.key_filename = str(keys.client_key)
        self.config = self.workdir / "sshd_config"
        self.log = self.workdir / "sshd.log"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.known_hosts = self.workdir / "known_hosts"
        self.pidfile = self.workdir / "sshd.pid"
        host_pub = keys.host_pub.read_text().split()
        #: "<type> <base64>" of the host key, without comment.
        self.host_pubkey_line = f"{host_pub[0]} {host_pub[1]}"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(
        cls,
        workdir: Path,
        keys: SshKeys,
        port: int | None = None,
        session_env: dict[str, str] | None = None,
    ) -> Sshd:
        """Write config, launch ``sshd -D`` and wait until a key login works.

        ``session_env`` is set in every session (authorized_keys options); None
        means DEFAULT_SESSION_ENV, ``{}`` a stock login that reads ~/.bashrc.
        """
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self = cls(workdir, keys, port or free_port(), session_env)
        self._write_files()
        self._launch()
        return self

    def _write_files(self) -> None:
        for key, value in self.session_env.items():
            if '"' in key + value or "\n" in key + value or "=" in key:
                raise ValueError(f"unsupported session_env entry {key!r}={value!r}")
        # Per-key environment= options (allowed by PermitUserEnvironment);
        # unlike sshd's SetEnv they can override the PATH sshd sets.
        options = ",".join(f'environment="{k}={v}"' for k, v in self.session_env.items())
        prefix = f"{options} " if options else ""
        self.authorized_keys.write_text(prefix + self.keys.client_pub.read_text())
        self.known_hosts.write_text(f"[{self.hostname}]:{self.port} {self.host_pubkey_line}\n")
        self.config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.hostname}",
                    f"Port {self.port}",
                    f"HostKey {self.keys.host_key}",
                    f"PidFile {self.pidfile}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "UseDNS no",
                    "MaxStartups 100",
                    "MaxSessions 50",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    "PermitUserEnvironment " + (",".join(self.session_env) or "no"),
                    "",
                ]
            )
        )

    def _launch(self) -> None:
        # Privilege separation needs this directory when sshd runs as root.
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-E", str(self.log), "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._register()
        try:
            wait_for_port(self.port, proc=self.proc)
            self._wait_for_login()
        except BaseException:
            self.stop()
            raise

    def ssh_command(self, *remote: str) -> list[str]:
        """OpenSSH client argv that logs in to this server (ignores ~/.ssh/config)."""
        return [
            "ssh",
            "-F", "/dev/null",
            "-i", self.key_filename,
            "-p", str(self.port),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5",
            f"{self.user}@{self.hostname}",
            *remote,
        ]  # fmt: skip

    def _wait_for_login(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                res = _run(self.ssh_command("true"), timeout=10)
                if res.returncode == 0:
                    return
                detail = res.stderr.strip()
            except subprocess.TimeoutExpired:
                detail = "ssh timed out"
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited:\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ssh login to port {self.port} failed: {detail}\n{_tail(self.log)}")
            time.sleep(0.1)

    @property
    def connect_kwargs(self) -> dict[str, Any]:
        """Paramiko ``connect_kwargs`` using only the test key."""
        return {
            "key_filename": self.key_filename,
            "look_for_keys": False,
            "allow_agent": False,
        }

    def connection(self, **kwargs: Any) -> Any:
        """A ``fabric.Connection`` that trusts only this server's host key."""
        import fabric  # local import: the module itself does not need fabric
        import paramiko

        kwargs.setdefault("connect_kwargs", self.connect_kwargs)
        conn = fabric.Connection(self.hostname, port=self.port, user=self.user, **kwargs)
        conn.client.load_host_keys(str(self.known_hosts))
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return conn

    def session_pids(self) -> list[int]:
        """PIDs of the per-connection sshd processes forked by this listener."""
        return children(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def kill_sessions(self) -> int:
        """SIGKILL every connection of this listener and everything it runs.

        Simulates the network link dying: clients see the TCP connection
        drop, while the listener keeps accepting new logins.  Returns the
        number of processes killed (sshd session processes plus their
        descendants such as shells and commands).
        """
        if self.proc is None or self.proc.poll() is not None:
            return 0
        return _kill_all(_snapshot_tree(self.proc.pid))

    def stop(self) -> None:
        """Stop the listener and every session it spawned."""
        if self.proc is not None:
            self.kill_sessions()
            _terminate(self.proc)
        self._unregister()

    def restart(self) -> None:
        """Stop and start again on the same port with the same keys."""
        self.stop()
        self._launch()


# --------------------------------------------------------------------------
# supervisord
# --------------------------------------------------------------------------


def _supervisor_value(value: object) -> str:
    """Escape a config value: supervisor expands ``%(name)s`` itself."""
    return str(value).replace("%", "%%")


def _supervisor_env(env: dict[str, Any]) -> str:
    """Render ``environment=``: supervisor splits it with non-POSIX shlex,
    so there is no escaping; quote with whichever quote the value lacks."""
    parts = []
    for key, value in env.items():
        text = str(value)
        quote = "'" if '"' in text else '"'
        # supervisor also strips quote characters off both ends of the value
        if quote in text or "\n" in text or text.strip("'\"") != text:
            raise ValueError(f"supervisor cannot express env value {text!r}")
        parts.append(f"{key}={quote}{_supervisor_value(text)}{quote}")
    return ",".join(parts)


class Supervisord(_Service):
    """A private supervisord with its own unix socket and config."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.conf = self.workdir / "supervisord.conf"
        # AF_UNIX paths are limited to 107 bytes: pytest's tmp dirs can be longer.
        self.socket = Path(tempfile.mkdtemp(prefix="svd-")) / "s.sock"
        self.pidfile = self.workdir / "supervisord.pid"
        self.logfile = self.workdir / "supervisord.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, workdir: Path, programs: dict[str, dict[str, Any]]) -> Supervisord:
        """Write supervisord.conf for ``programs`` and run supervisord.

        Program keys: ``command`` (required), ``directory``, ``autostart``
        (default False), ``stopsignal`` (default "TERM"), ``environment``
        (dict).  Any other key is written verbatim as a supervisor option.
        """
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self = cls(workdir)
        self.conf.write_text(self._render(programs))
        with open(self.workdir / "supervisord.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["supervisord", "-n", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self._register()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _render(self, programs: dict[str, dict[str, Any]]) -> str:
        wd = self.workdir
        lines = [
            "[unix_http_server]",
            f"file={self.socket}",
            "chmod=0700",
            "",
            "[supervisord]",
            "nodaemon=true",
            f"pidfile={self.pidfile}",
            f"logfile={self.logfile}",
            f"childlogdir={wd}",
            "loglevel=info",
        ]
        if os.geteuid() == 0:
            lines.append("user=root")  # silences the "running as root" warning
        lines += [
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket}",
            "",
        ]
        for name, spec in programs.items():
            spec = dict(spec)
            options: dict[str, Any] = {
                "command": spec.pop("command"),
                "autostart": "true" if spec.pop("autostart", False) else "false",
                "autorestart": "true",
                "startsecs": 1,
                "stopsignal": spec.pop("stopsignal", "TERM"),
                "stopwaitsecs": 10,
                "stopasgroup": "true",
                "killasgroup": "true",
                "stdout_logfile": wd / f"{name}.out.log",
                "stderr_logfile": wd / f"{name}.err.log",
            }
            if directory := spec.pop("directory", None):
                options["directory"] = directory
            if env := spec.pop("environment", None):
                options["environment"] = _supervisor_env(env)
            options.update(spec)
            lines.append(f"[program:{name}]")
            for key, value in options.items():
                text = value if key == "environment" else _supervisor_value(value)
                lines.append(f"{key}={text}")
            lines.append("")
        return "\n".join(lines)

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            res = self.ctl("status")
            if res.returncode in (0, 3):  # 3 = some programs not running
                return
            if self.proc is None or self.proc.poll() is not None:
                out = _tail(self.workdir / "supervisord.out")
                raise RuntimeError(f"supervisord exited:\n{out}\n{_tail(self.logfile)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"supervisord not answering: {res.stdout}{res.stderr}")
            time.sleep(0.1)

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``supervisorctl -c <conf> *args`` (never raises on exit code)."""
        return _run(["supervisorctl", "-c", str(self.conf), *args], timeout=timeout)

    def stop(self) -> None:
        """Shut supervisord down and make sure no program survives."""
        if self.proc is not None:
            tree = _snapshot_tree(self.proc.pid)
            if self.proc.poll() is None:
                try:
                    self.ctl("shutdown", timeout=30)
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    pass
            _terminate(self.proc)
            _kill_all(tree)
        with contextlib.suppress(OSError):
            self.socket.unlink(missing_ok=True)
            self.socket.parent.rmdir()
        self._unregister()


# --------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------


class Nginx(_Service):
    """A private nginx reverse proxy 127.0.0.1:port -> upstream(s)."""

    def __init__(self, workdir: Path, upstreams: list[str], port: int, upstream_file: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.upstreams = upstreams
        self.port = port
        self.upstream_file = upstream_file
        self.url = f"http://{LOOPBACK}:{port}"
        self.conf = self.workdir / "nginx.conf"
        self.error_log = self.workdir / "error.log"
        self.access_log = self.workdir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, workdir: Path, upstream: str | Sequence[str], port: int | None = None,
              upstream_file: Path | None = None) -> Nginx:
        """Proxy to ``upstream`` ("host:port", or several for one pool). With ``upstream_file``
        the `upstream app` block lives in that include file (written here from ``upstream``
        when it does not exist): what shipfab's `[apps.X.nginx]` manages."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        upstreams = [upstream] if isinstance(upstream, str) else list(upstream)
        self = cls(workdir, upstreams, port or free_port(), upstream_file)
        if upstream_file is not None and not upstream_file.exists():
            upstream_file.write_text(self._upstream_block())
        self.conf.write_text(self._render())
        check = _run([*self.command(), "-t", "-q"])
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._register()
        try:
            wait_for_port(self.port, proc=self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def command(self) -> list[str]:
        """nginx with this instance's prefix and config (append `-t` or `-s reload`)."""
        return ["nginx", "-p", str(self.workdir), "-e", str(self.error_log), "-c", str(self.conf)]

    def settings(self) -> dict[str, str]:
        """`[apps.X.nginx]` settings that manage this instance's upstream file."""
        base = shlex.join(self.command())
        return {"upstream_file": str(self.upstream_file), "upstream": "app", "test": f"{base} -t -q",
                "reload": f"{base} -s reload", "access_log": str(self.access_log),
                "pid_file": str(self.workdir / "nginx.pid")}

    def _upstream_block(self) -> str:
        servers = "\n".join(f"        server {u} max_fails=0;" for u in self.upstreams)
        return f"upstream app {{\n{servers}\n        keepalive 8;\n    }}\n"

    def _render(self) -> str:
        wd = self.workdir
        upstream = f"include {self.upstream_file};" if self.upstream_file is not None else self._upstream_block()
        temp = "\n".join(
            f"    {kind}_temp_path {wd / (kind + '_temp')};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""
        return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {wd / "nginx.pid"};
error_log {self.error_log} info;
{user}
events {{
    worker_connections 512;
}}

http {{
{temp}
    log_format shipfab '$time_iso8601 $status $upstream_addr $upstream_status $request_time "$request"';
    access_log {self.access_log} shipfab;

    {upstream}

    server {{
        listen {LOOPBACK}:{self.port};
        server_name localhost;

        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""

    def stop(self) -> None:
        """Graceful stop (SIGQUIT), SIGKILL fallback; workers too."""
        if self.proc is not None:
            _terminate(self.proc, signal.SIGQUIT, timeout=10)
        self._unregister()


# --------------------------------------------------------------------------
# load generator
# --------------------------------------------------------------------------


@dataclass
class Sample:
    """One request: when it was sent, its status (or error) and body excerpt."""

    timestamp: float
    status: int | None
    error: str | None
    body: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else self.error
        clock = time.strftime("%H:%M:%S", time.localtime(self.timestamp))
        millis = int(self.timestamp % 1 * 1000)
        first_line = self.body.splitlines()[0] if self.body else ""
        return f"{clock}.{millis:03d} {what} {first_line[:80]!r}"


@dataclass
class LoadResult:
    """Summary of a load run."""

    total: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    bodies: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    duration: float = 0.0
    resent: int = 0  # GETs resent once on a new connection after a kept-alive one closed unanswered


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoadGenerator:
    """Sends GET requests to one loopback URL at ~``rate`` req/s in a thread.

    Requests go out on a fixed schedule (slot ``i`` at ``t0 + i / rate``);
    slots missed because a request was slow are skipped rather than burst.
    """

    def __init__(
        self,
        url: str,
        rate: float = 50.0,
        max_seconds: float = 300.0,
        timeout: float = 5.0,
    ) -> None:
        if not _is_loopback(url):
            raise ValueError(f"LoadGenerator only targets loopback URLs, not {url!r}")
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.url = url
        self.rate = rate
        self.max_seconds = max_seconds
        self.timeout = timeout
        self._samples: list[Sample] = []
        self.resent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def start(self) -> Self:
        """Start sending requests in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("LoadGenerator already started")
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="load-generator", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        import requests  # local import keeps the module importable without it

        interval = 1.0 / self.rate
        t0 = time.monotonic()
        slot = 0
        with requests.Session() as session:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - t0 > self.max_seconds:
                    break
                due = t0 + slot * interval
                if due > now and self._stop.wait(due - now):
                    break
                self._samples.append(self._one(session))
                slot = max(slot + 1, math.ceil((time.monotonic() - t0) * self.rate))

    def _one(self, session: Any) -> Sample:
        sent = time.time()
        try:
            try:
                resp = session.get(self.url, timeout=self.timeout, allow_redirects=False)
            except Exception as exc:  # noqa: BLE001
                # A kept-alive connection the server closed before answering (nginx closes its
                # idle ones on every reload): a browser resends a GET on a new connection
                # (RFC 9112 9.3.1). So does this client, once, and counts it; anything else fails.
                if "RemoteDisconnected" not in str(exc):
                    raise
                self.resent += 1
                resp = session.get(self.url, timeout=self.timeout, allow_redirects=False)
            return Sample(sent, resp.status_code, None, resp.text[:200])
        except Exception as exc:  # noqa: BLE001 - every error is a data point
            return Sample(sent, None, f"{type(exc).__name__}: {exc}", "")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def result(self) -> LoadResult:
        """Summary of the samples recorded so far."""
        samples = list(self._samples)
        bad = [s for s in samples if not s.ok]
        return LoadResult(
            total=len(samples),
            failed=len(bad),
            failures=[s.describe() for s in bad[:10]],
            bodies=Counter(s.body.splitlines()[0] if s.body else "" for s in samples),
            samples=samples,
            duration=time.monotonic() - self._started if self._started else 0.0,
            resent=self.resent,
        )

    def stop(self) -> LoadResult:
        """Stop sending (waits for an in-flight request) and summarise."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        return self.result()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "LoadGenerator",
    "LoadResult",
    "Nginx",
    "Sample",
    "SshKeys",
    "Sshd",
    "Supervisord",
    "children",
    "descendants",
    "free_port",
    "make_ssh_keys",
    "port_open",
    "wait_for_port",
]


def set_session_env(sshd: Sshd, env: dict[str, str]) -> None:
    """Change the environment of the *next* sessions of a running sshd: authorized_keys
    options are read at each login. Only the variables it started with can be set."""
    if not set(env) <= set(sshd.session_env):
        raise ValueError(f"sshd {sshd.port} was started permitting only {sorted(sshd.session_env)}")
    sshd.session_env = env
    sshd._write_files()
