"""The one place remote commands run: dry-run, echo, redaction, errors, host keys.

Steps only *build* command strings (pure functions, unit-tested); they hand them to
`Remote.run`, which prints them under --dry-run instead of running anything that
changes the host, shows them with -v, and turns failures into clear errors.
"""

from __future__ import annotations

import io
import shutil
import socket

import paramiko
from fabric import Config, Connection
from invoke import Context
from invoke.runners import Result

from .errors import StepFailed
from .hostkeys import RefuseUnknownHostKey, UnknownHostKey, fingerprint, known_hosts_path
from .inventory import Target
from .output import Printer


class ConnectionLost(StepFailed):
    """The ssh link to a host failed or dropped."""


class HostKeyRejected(StepFailed):
    """The host's ssh key is unknown or changed: never accepted silently."""


def open_connection(target: Target) -> Connection | Context:
    """A Fabric Connection for an ssh host, a local invoke Context for the sandbox."""
    overrides = {"run": {"in_stream": False}}
    if target.local:
        return Context(Config(overrides=overrides))
    connect_kwargs = {"key_filename": target.key_filename} if target.key_filename else {}
    if target.ssh_alias:
        conn = Connection(target.hostname, config=Config(overrides=overrides), connect_timeout=target.connect_timeout)
    else:
        conn = Connection(
            host=target.hostname,
            user=target.user or None,
            port=target.port,
            config=Config(overrides=overrides),
            connect_kwargs=connect_kwargs,
            connect_timeout=target.connect_timeout,
        )
    # Fabric accepts unknown host keys silently (and reads no known_hosts); shipfab does not.
    conn.client.set_missing_host_key_policy(RefuseUnknownHostKey())
    known_hosts = known_hosts_path(target.known_hosts)
    if known_hosts.is_file():
        conn.client.load_host_keys(str(known_hosts))
    return conn


class Remote:
    """Runs commands on one target through its connection, honouring dry-run."""

    def __init__(self, target: Target, printer: Printer, dry_run: bool = False) -> None:
        self.target = target
        self.host = target.name
        self.printer = printer
        self.dry_run = dry_run
        self._conn: Connection | Context | None = None

    @property
    def conn(self) -> Connection | Context:
        if self._conn is None:
            self._conn = open_connection(self.target)
        if isinstance(self._conn, Connection) and not self._conn.is_connected:
            self._open(self._conn)
        return self._conn

    def _open(self, conn: Connection) -> None:
        """Connect, then turn off Nagle: back-to-back small commands otherwise wait ~40 ms each
        on delayed ACKs (measured in bench/: 45 ms -> 10 ms per command on loopback)."""
        conn.open()
        sock = conn.transport.sock if conn.transport else None
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def run(
        self, cmd: str, *, change: bool = True, warn: bool = False, timeout: float | None = None, show_output: bool = True,
        stdin: str | None = None,
    ) -> Result:
        """Run `cmd` on the host. `change=False` marks a read-only query (it runs under --dry-run too);
        `show_output=False` keeps its output out of -v (it holds secrets); `stdin` is fed to the
        command and never shown (how secrets reach it without a command line)."""
        shown = self.printer.redact(cmd)
        if self.dry_run and change:
            self.printer.line(f"would run: {shown}", self.host, level=0)
            return Result(stdout="", stderr="", exited=0, command=cmd)
        self.printer.line(f"$ {shown}", self.host, level=2)
        try:
            in_stream = io.StringIO(stdin) if stdin is not None else False
            res = self.conn.run(cmd, hide=True, warn=True, timeout=timeout, in_stream=in_stream)
        except paramiko.BadHostKeyException as exc:
            raise HostKeyRejected(
                f"{self.host}: the host key of {exc.hostname} CHANGED: it presents {fingerprint(exc.key)}, "
                f"known_hosts has {fingerprint(exc.expected_key)}. Refusing to connect. If the change is expected, "
                f"remove the old key (ssh-keygen -R) and run: fab -H {self.host} trust"
            ) from None
        except UnknownHostKey as exc:
            raise HostKeyRejected(
                f"{self.host}: unknown host key for {exc.hostname}: {fingerprint(exc.key)}. Refusing to connect. "
                f"If that fingerprint is right, trust it: fab -H {self.host} trust "
                f"(or ssh-keyscan -p {self.target.port} {self.target.hostname} >> {known_hosts_path(self.target.known_hosts)})"
            ) from None
        except paramiko.SSHException as exc:
            raise ConnectionLost(f"{self.host}: ssh failed: {exc}") from None
        except (TimeoutError, OSError, EOFError) as exc:
            raise ConnectionLost(f"{self.host}: ssh connection failed: {exc or type(exc).__name__}") from None
        for stream in (res.stdout, res.stderr) if show_output else ():
            if stream.strip():
                self.printer.line(stream.rstrip(), self.host, level=2)
        if res.exited == -1:
            raise ConnectionLost(f"{self.host}: ssh connection dropped while running: {_short(shown)}")
        if not res.ok and not warn:
            detail = (res.stderr.strip() or res.stdout.strip())[-800:]
            raise StepFailed(f"{self.host}: command failed (exit {res.exited}): {_short(shown)}\n{self.printer.redact(detail)}")
        return res

    def put(self, local: str, remote_path: str) -> None:
        """Upload a file (a plain copy for the local sandbox)."""
        self._transfer("upload", local, remote_path)

    def get(self, remote_path: str, local: str) -> None:
        """Download a file (a plain copy for the local sandbox)."""
        self._transfer("download", remote_path, local)

    def _transfer(self, verb: str, src: str, dst: str) -> None:
        """One file over sftp (`upload`: local -> host, `download`: host -> local), honouring dry-run."""
        if self.dry_run:
            self.printer.line(f"would {verb}: {src} -> {dst}", self.host, level=0)
            return
        self.printer.line(f"{verb} {src} -> {dst}", self.host, level=2)
        if self.target.local:
            shutil.copyfile(src, dst)
            return
        try:
            if verb == "upload":
                self.conn.put(src, remote=dst)
            else:
                self.conn.get(src, local=dst)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionLost(f"{self.host}: {verb} failed: {exc or type(exc).__name__}") from None

    def close(self) -> None:
        if self._conn is not None and isinstance(self._conn, Connection):
            self._conn.close()
        self._conn = None


def _short(cmd: str, limit: int = 160) -> str:
    one = " ".join(cmd.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."
