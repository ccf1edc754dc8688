"""The one place remote commands run: dry-run, echo, redaction, errors, host keys.

Steps only *build* command strings (pure functions, unit-tested); they hand them to
`Remote.run`, which prints them under --dry-run instead of running anything that
changes the host, shows them with -v, and turns failures into clear errors.
"""

from __future__ import annotations

import codecs
import io
import logging
import shlex
import shutil
import socket
from collections.abc import Callable, Iterator
from typing import IO

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote as FabricRunner
from invoke import Context
from invoke.exceptions import ThreadException
from invoke.runners import Result

from .errors import StepFailed
from .hostkeys import RefuseUnknownHostKey, UnknownHostKey, fingerprint, known_hosts_path
from .inventory import Target
from .output import Printer

# paramiko logs errors of its transport thread (with traceback lines) to the root logger's
# last-resort handler, i.e. onto the user's terminal; shipfab reports them as one line instead.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only; elsewhere ACKs keep their default delay
BUSY_WAIT = 900  # seconds a serialized command waits for a command still running on the host


class ConnectionLost(StepFailed):
    """The ssh link to a host failed or dropped."""


class Unreachable(ConnectionLost):
    """The host could not be reached at all: nothing ran there."""


class HostKeyRejected(StepFailed):
    """The host's ssh key is unknown or changed: never accepted silently."""


class _Runner(FabricRunner):
    """Fabric's remote runner, as every remote command of shipfab runs: woken by the command's
    exit status instead of polling for it every 10 ms (10 -> 3 ms per command on loopback,
    bench/), its output read in large pieces and decoded whole, no per-read work for watchers."""

    # invoke's stdin loop also sleeps this long between two reads: the 10 ms default delayed the
    # end of every stdin we send (an archive, a secret) by 10 ms.
    input_sleep = 0.001
    # Fewer, larger reads of the command's output (invoke reads 1000 bytes at a time).
    read_chunk_size = 65536
    killed_by_timeout = False

    def read_proc_output(self, reader: Callable[[int], bytes]) -> Iterator[str]:
        """The output as text, decoded incrementally: a character split between two reads stays
        whole (invoke decodes each read on its own, and a split é became two U+FFFD)."""
        decoder = codecs.getincrementaldecoder(self.encoding)("replace")
        while data := reader(self.read_chunk_size):
            if text := decoder.decode(data):
                yield text
        if tail := decoder.decode(b"", final=True):
            yield tail

    def respond(self, buffer_: list[str]) -> None:
        # invoke joins everything read so far on every chunk, for watchers (prompt responders):
        # quadratic in the output's size. shipfab sets none (sudo runs with -n).
        if self.watchers:
            super().respond(buffer_)

    def wait(self) -> None:
        # paramiko sets status_event on the exit status and when the channel closes (a cut link, a timeout's kill).
        while not self.channel.status_event.wait(0.05):
            if self.has_dead_threads:
                return

    def kill(self) -> None:
        """The timeout's kill (invoke's timer thread): noted before the channel closes and wakes `wait`."""
        self.killed_by_timeout = True
        super().kill()

    @property
    def timed_out(self) -> bool:
        # invoke's own test (its timer thread has ended) can still be false right after the kill.
        return self.killed_by_timeout or super().timed_out


def _config(overrides: dict) -> Config:
    """A Fabric config. Its root gets the `_keypath`/`_root` a nested one has (the same values
    invoke assumes for a root): invoke looks them up with hasattr() on every `config.run`,
    and each miss built a long error text: ~1 ms of CPU per command (bench/)."""
    config = Config(overrides=overrides)
    config._set(_keypath=(), _root=config)
    return config


def open_connection(target: Target) -> Connection | Context:
    """A Fabric Connection for an ssh host, a local invoke Context for the sandbox."""
    overrides: dict = {"run": {"in_stream": False}}
    if target.local:
        return Context(_config(overrides))
    overrides["runners"] = {"remote": _Runner}
    connect_kwargs = {"key_filename": target.key_filename} if target.key_filename else {}
    if target.ssh_alias:
        conn = Connection(target.hostname, config=_config(overrides), connect_timeout=target.connect_timeout)
    else:
        conn = Connection(
            host=target.hostname,
            user=target.user or None,
            port=target.port,
            config=_config(overrides),
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
        # Once the deploy lock is held: a file every changing command takes with flock(1), so a
        # command orphaned by a dropped link finishes before the next one (an undo) starts.
        self.busy: str = ""
        self.would_run = 0  # commands a dry run printed instead of running
        self._conn: Connection | Context | None = None

    @property
    def conn(self) -> Connection | Context:
        if self._conn is None:
            self._conn = open_connection(self.target)
        if isinstance(self._conn, Connection) and not self._conn.is_connected:
            try:
                self._open(self._conn)
            except (paramiko.BadHostKeyException, UnknownHostKey):
                raise
            except (paramiko.SSHException, TimeoutError, OSError, EOFError) as exc:
                where = f"{self._conn.host}:{self._conn.port}"
                self._conn = None
                why = getattr(exc, "strerror", None) or exc or type(exc).__name__  # "Connection refused", not "[Errno 111] ..."
                raise Unreachable(f"{self.host}: cannot connect to {where}: {why}") from None
        return self._conn

    def _open(self, conn: Connection) -> None:
        """Connect over a `_LinkSocket` from the first byte: the ssh handshake and the first
        command otherwise each wait ~40 ms on a delayed ACK, and back-to-back small commands
        too (bench/: connect + first command 121 -> 31 ms on loopback). Through a gateway of the
        ssh config (ProxyJump / ProxyCommand), Fabric makes the link as it is."""
        if conn.gateway:
            conn.open()
            return
        sock = _LinkSocket.dial(conn.host, conn.port, conn.connect_timeout)
        conn.connect_kwargs = {**conn.connect_kwargs, "sock": sock}
        try:
            conn.open()
        except BaseException:
            sock.close()
            raise
        finally:
            del conn.connect_kwargs["sock"]

    def serialized(self, cmd: str) -> str:
        """`cmd` under the host's busy flock (see `busy`), or as it is when there is none."""
        if not self.busy:
            return cmd
        # -o: the command's children (a daemonized gunicorn) must not inherit the lock.
        # trap: a dropped link (SIGHUP, then EPIPE on output) must not kill the script halfway:
        # it runs to its end, and the undo, waiting on the same flock, finds the host settled.
        script = "trap '' HUP PIPE\n" + cmd
        return f"flock -o -w {BUSY_WAIT} {shlex.quote(self.busy)} bash -c {shlex.quote(script)}"

    def run(
        self, cmd: str, *, change: bool = True, warn: bool = False, timeout: float | None = None, show_output: bool = True,
        stdin: str | None = None, serialize: bool = True, out_stream: IO[str] | None = None,
    ) -> Result:
        """Run `cmd` on the host. `change=False` marks a read-only query (it runs under --dry-run too);
        `show_output=False` keeps its output out of -v (it holds secrets); `stdin` is fed to the
        command and never shown (how secrets reach it without a command line). A changing command
        runs under the busy flock once the lock is held (`serialize=False`: not, e.g. the unlock).
        `out_stream` receives the command's stdout as it arrives (still captured in the result)."""
        shown = self.printer.redact(cmd)
        if self.dry_run and change:
            self.would_run += 1
            self.printer.line(f"would run: {shown}", self.host, level=0)
            return Result(stdout="", stderr="", exited=0, command=cmd)
        self.printer.line(f"$ {shown}", self.host, level=2)
        wire = self.serialized(cmd) if change and serialize else cmd
        try:
            in_stream = _Stdin(stdin) if stdin is not None else False
            res = self.conn.run(wire, hide="stderr" if out_stream else True, warn=True, timeout=timeout, in_stream=in_stream,
                                out_stream=out_stream)
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
        except ConnectionLost:
            raise
        except ThreadException as exc:  # an I/O thread failed: sending stdin over a link that dropped
            if not any(isinstance(e.value, OSError | EOFError | paramiko.SSHException) for e in exc.exceptions):
                raise
            self._drop()
            raise ConnectionLost(f"{self.host}: ssh connection dropped while running: {_short(shown)}") from None
        except paramiko.SSHException as exc:
            self._drop()
            raise ConnectionLost(f"{self.host}: ssh failed: {exc}") from None
        except (TimeoutError, OSError, EOFError) as exc:
            self._drop()
            raise ConnectionLost(f"{self.host}: ssh connection failed: {exc or type(exc).__name__}") from None
        for stream in (res.stdout, res.stderr) if show_output else ():
            if stream.strip():
                self.printer.line(stream.rstrip(), self.host, level=2)
        if res.exited == -1:
            self._drop()
            raise ConnectionLost(f"{self.host}: ssh connection dropped while running: {_short(shown)}")
        if not res.ok and not warn:
            detail = self.printer.redact(res.stderr.strip() or res.stdout.strip())[-800:]  # masked before it is cut
            raise StepFailed(f"{self.host}: command failed (exit {res.exited}): {_short(shown)}\n{detail}")
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
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a dead link may fail to close; it is gone either way
                pass
        self._conn = None

    def _drop(self) -> None:
        """Forget a connection that failed: the next command opens a new one."""
        self.close()

    def reconnect(self) -> None:
        """A fresh connection (after a dropped link or an interrupted command, before an undo)."""
        self.close()
        _ = self.conn


class _LinkSocket(socket.socket):
    """The TCP link to an ssh host, tuned for a request/answer protocol: Nagle off (small packets
    leave at once), and every read asks for quick ACKs. sshd leaves Nagle on for commands without
    a terminal, so its second small packet in a row (the answer after a notice it sent unasked)
    waits until the first is ACKed, which Linux delays by 40 ms by default; it resets the quick
    ACK mode on its own, hence once per read."""

    @classmethod
    def dial(cls, host: str, port: int, timeout: float | None) -> _LinkSocket:
        """A link connected to host:port, Nagle off before the first byte leaves."""
        raw = socket.create_connection((host, port), timeout=timeout)  # each address in turn, as paramiko
        sock = cls(fileno=raw.detach())
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        return super().recv(bufsize, flags)


class _Stdin(io.StringIO):
    """invoke reads a stdin that is no terminal one character per 10 ms: hand it over whole."""

    def read(self, size: int | None = -1) -> str:
        return super().read()


def _short(cmd: str, limit: int = 160) -> str:
    one = " ".join(cmd.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."
