"""Fault injection against a real sshd host: freeze a deploy at an exact remote command,
act (cut the ssh link, signal the CLI), let it go on, then read the host's truth.

Pause points. The test sshd's sessions get a PATH whose first directory holds shims
(`flock`, `mkdir`, `rm`, `rmdir`, `curl`). A shim does nothing but exec the real binary
unless a rule is armed: `Pauser.arm(commands, pattern, mode)` writes it to a control file.
The first shim call whose command name is listed and whose whole argument list (joined
by spaces, newlines kept) matches the regex claims the rule (an atomic rename: a rule
fires once), writes a `paused-<pid>` marker and blocks until the test writes `go-<pid>`
(bounded: after PAUSE_LIMIT seconds it goes on by itself). Modes:

- ``before``: pause, then exec the real binary (the command has not run yet);
- ``after``: run the real binary, pause, exit with its status (it has run, no answer yet);
- ``inside`` (flock only): take the real lock, pause while holding it, then run the
  wrapped command: an orphaned command keeps the `busy` lock, as it would in real life.

`cut_link` kills only the per-connection sshd processes: the client sees the link drop
while the remote command, now an orphan, goes on (and finishes once released).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import Host, World
from .services import DEFAULT_SESSION_ENV, SSHD, Sshd, descendants, set_session_env

PAUSE_LIMIT = 120  # seconds a paused command waits for its "go" before going on alone
SHIMMED = ("flock", "mkdir", "rm", "rmdir", "curl")
BUSY = r"/\.shipfab/busy "  # flock's arguments for a changing command (under the busy flock, once the lock is held)
TAKING_THE_LOCK = r"^-w [0-9]+ 9$"  # flock's arguments in the lock command, before its mkdir (the .shipfab/ flock)
RELEASE_ID = re.compile(r"\b\d{8}T\d{6}Z\b")
TRACEBACK = "Traceback (most recent call last)"

_SHIM = r"""#!/bin/bash
# Fault-injection shim for {name} (tests/faults.py): exec the real binary unless a rule matches.
real={real}; ctl={ctl}; self={self}; name={name}
pause() {{
  printf '%s\n' "$SHIPFAB_FAULT_ARGS" > "$ctl/paused-$$.tmp" && {mv} -T "$ctl/paused-$$.tmp" "$ctl/paused-$$"
  i=0; while [ ! -e "$ctl/go-$$" ] && [ $i -lt {ticks} ]; do {sleep} 0.05; i=$((i+1)); done
}}
if [ "$1" = --shipfab-pause ]; then shift; pause; exec "$@"; fi
[ -e "$ctl/armed" ] || exec "$real" "$@"
{{ IFS= read -r want; IFS= read -r mode; IFS= read -r re; }} < "$ctl/armed" 2>/dev/null || exec "$real" "$@"
all="$*"
case " $want " in *" $name "*) ;; *) exec "$real" "$@";; esac
[[ $all =~ $re ]] || exec "$real" "$@"
{mv} -T "$ctl/armed" "$ctl/fired-$$" 2>/dev/null || exec "$real" "$@"
export SHIPFAB_FAULT_ARGS="$all"
case $mode in
  before) pause; exec "$real" "$@";;
  after) "$real" "$@"; rc=$?; pause; exit $rc;;
esac
# inside: flock [options] FILE COMMAND... -> flock [options] FILE <this shim> --shipfab-pause COMMAND...
opts=()
while [ $# -gt 0 ]; do
  case $1 in
    -w|--wait|--timeout|-E|--conflict-exit-code) opts+=("$1" "$2"); shift 2;;
    --) shift; break;;
    -*) opts+=("$1"); shift;;
    *) break;;
  esac
done
file=$1; shift
if [ "$1" = -c ] || [ "$1" = --command ]; then set -- /bin/sh -c "$2"; fi
exec "$real" "${{opts[@]}}" "$file" "$self" --shipfab-pause "$@"
"""


@dataclass(frozen=True)
class Paused:
    """A command frozen at a pause point: its pid and its argument list."""

    pid: int
    args: str


class Pauser:
    """Pause points for one sshd host's sessions (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "shims"
        self.ctl = root / "ctl"
        self.bin.mkdir(parents=True)
        self.ctl.mkdir(parents=True)
        self._seen: set[str] = set()
        system_path = DEFAULT_SESSION_ENV["PATH"]
        helpers = {tool: shutil.which(tool, path=system_path) for tool in ("mv", "sleep")}
        for name in SHIMMED:
            real = shutil.which(name, path=system_path)
            if real is None:
                continue
            shim = self.bin / name
            shim.write_text(_SHIM.format(
                name=name, real=shlex.quote(real), ctl=shlex.quote(str(self.ctl)), self=shlex.quote(str(shim)),
                mv=shlex.quote(helpers["mv"] or "mv"), sleep=shlex.quote(helpers["sleep"] or "sleep"),
                ticks=PAUSE_LIMIT * 20,
            ))
            shim.chmod(0o755)

    def install(self, sshd: Sshd) -> None:
        """Put the shims first on the PATH of the next sessions of `sshd`."""
        env = dict(sshd.session_env)
        env["PATH"] = f"{self.bin}:{env.get('PATH', DEFAULT_SESSION_ENV['PATH'])}"
        set_session_env(sshd, env)

    def arm(self, commands: str, pattern: str, mode: str = "inside") -> None:
        """Pause the next call of one of `commands` (space-separated names) whose arguments match `pattern`."""
        if mode not in ("before", "after", "inside"):
            raise ValueError(f"unknown pause mode {mode!r}")
        if mode == "inside" and commands != "flock":
            raise ValueError("mode 'inside' is for flock only")
        if "\n" in pattern:
            raise ValueError("the pattern must be one line")
        tmp = self.ctl / "armed.tmp"
        tmp.write_text(f"{commands}\n{mode}\n{pattern}\n")
        tmp.rename(self.ctl / "armed")

    def disarm(self) -> None:
        (self.ctl / "armed").unlink(missing_ok=True)

    def wait_paused(self, fab: FabProcess | None = None, timeout: float = 60.0) -> Paused:
        """The next command that reached a pause point; fails at once if `fab` exits first."""
        deadline = time.monotonic() + timeout
        while True:
            for marker in sorted(self.ctl.glob("paused-*")):
                if marker.name.endswith(".tmp") or marker.name in self._seen:
                    continue
                self._seen.add(marker.name)
                return Paused(int(marker.name.removeprefix("paused-")), marker.read_text().strip())
            if fab is not None and fab.proc.poll() is not None:
                raise AssertionError(f"fab exited ({fab.proc.returncode}) before the pause point:\n{fab.wait().stdout}")
            if time.monotonic() > deadline:
                armed = self.ctl / "armed"
                rule = armed.read_text() if armed.exists() else "(claimed)"
                raise AssertionError(f"nothing paused within {timeout}s; rule: {rule!r}\n{fab.output if fab else ''}")
            time.sleep(0.02)

    def release(self, paused: Paused) -> None:
        (self.ctl / f"go-{paused.pid}").touch()

    def release_all(self) -> None:
        """Let every paused command go on (teardown)."""
        self.disarm()
        for marker in self.ctl.glob("paused-*"):
            if not marker.name.endswith(".tmp"):
                (self.ctl / f"go-{marker.name.removeprefix('paused-')}").touch()


def cut_link(sshd: Sshd) -> int:
    """SIGKILL the per-connection sshd processes only: every client sees its link drop,
    the commands they ran go on as orphans, the listener keeps accepting. Returns how many."""
    if sshd.proc is None or sshd.proc.poll() is not None:
        return 0
    doomed = []
    for pid in descendants(sshd.proc.pid):
        try:
            if os.readlink(f"/proc/{pid}/exe") == SSHD:
                doomed.append(pid)
        except OSError:
            continue
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in doomed) and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(doomed)


def wait_orphans(host: Host, timeout: float = 120.0) -> None:
    """Block until no remote command holds the host's `busy` lock (orphans of a dropped link
    or a killed CLI have finished); nothing to wait for when the file does not exist."""
    busy = host.deploy_to / ".shipfab" / "busy"
    if busy.exists():
        res = subprocess.run(["flock", "-w", str(timeout), str(busy), "true"], check=False)
        assert res.returncode == 0, f"a command still holds {busy} after {timeout}s"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# ------------------------------------------------------------------ the CLI as a process


class FabProcess:
    """A running `fab` (world.popen_fab) whose output is collected as it comes."""

    def __init__(self, world: World, *args: str) -> None:
        self.args = args
        self.proc = world.popen_fab(*args)
        self._chunks: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._chunks.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "".join(self._chunks)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Wait for the exit (killing it after `timeout`); stdout holds stdout and stderr."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"fab {' '.join(self.args)} did not finish in {timeout}s:\n{self.output}") from None
        self._reader.join(10)
        return subprocess.CompletedProcess(["fab", *self.args], self.proc.returncode, self.output, "")


# ------------------------------------------------------------------ the host's truth


@dataclass(frozen=True)
class Truth:
    """What is really on the host, read from its files and processes (never from fab)."""

    current: str  # release id `current` points at ('' when missing)
    releases: tuple[str, ...]  # directories under releases/
    log: dict[str, dict[str, Any]]  # release log folded by release id (later fields win)
    lock: dict[str, Any] | None  # owner.json of the deploy lock ({} unreadable), None when free
    version: str | None  # what /health answers, None when nothing does
    workers: frozenset[str]  # working directories of the gunicorn workers


def fold_log(host: Host) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    for event in host.log():
        records.setdefault(event.get("release", ""), {}).update(event)
    return records


def lock_owner(host: Host) -> dict[str, Any] | None:
    lock = host.deploy_to / ".shipfab" / "lock"
    if not lock.is_dir():
        return None
    try:
        return json.loads((lock / "owner.json").read_text())
    except (OSError, ValueError):
        return {}


def served_version(host: Host) -> str | None:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{host.port}/health", timeout=5).json().get("version")
    except (requests.RequestException, ValueError):
        return None


def worker_cwds(host: Host) -> frozenset[str]:
    """Working directories of the gunicorn workers run from this host's deploy dir."""
    marker = str(host.deploy_to).encode()
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes() and b"gunicorn" in (
                    entry / "cmdline").read_bytes():
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    cwds = set()
    for pid, ppid in parents.items():
        if ppid in parents:  # a worker: its master is a gunicorn of this host too
            try:
                cwds.add(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
    return frozenset(cwds)


def read_truth(host: Host) -> Truth:
    return Truth(host.current(), tuple(host.releases()), fold_log(host), lock_owner(host), served_version(host),
                 worker_cwds(host))


def assert_serves(host: Host, release: str, version: str, settle: float = 15.0) -> Truth:
    """`current` is `release`, /health answers `version` and every worker runs from it (old
    workers of a graceful reload may take a moment to leave: waited for, up to `settle`)."""
    want = os.path.realpath(host.deploy_to / "releases" / release)
    deadline = time.monotonic() + settle
    while True:
        truth = read_truth(host)
        if truth.current == release and truth.version == version and truth.workers == {want}:
            return truth
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {release} ({version}) to serve with its workers, found {truth}")
        time.sleep(0.1)


def assert_no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert TRACEBACK not in text, text


def new_release_ids(before: Truth, res: subprocess.CompletedProcess[str], host: Host) -> set[str]:
    """Ids of releases the run made or named that did not exist before it."""
    named = set(RELEASE_ID.findall(res.stdout + (res.stderr or "")))
    return (named | set(fold_log(host)) | set(host.releases())) - set(before.releases) - {""}


def assert_outcome(
    host: Host, res: subprocess.CompletedProcess[str], before: Truth, *, old: str, new: str, names_release: bool = True,
) -> Truth:
    """The host's truth matches the exit code of a deploy from version `old` to `new`:

    0 the new release serves, logged success; 1 the previous release serves again, the
    failed one is gone and logged failed with a reason; 2 the output says what to run
    (`fab -H <host> unlock` when the lock is still held); 3 and 4 nothing changed.
    `names_release=False`: a run that failed before it chose a release id.
    Outside exit 2 and 3 the lock is free. Never a traceback."""
    out = res.stdout + (res.stderr or "")
    assert_no_traceback(out)
    code, name = res.returncode, host.name
    made = new_release_ids(before, res, host)
    if code == 0:
        truth = assert_serves(host, host.current(), new)
        assert truth.current in made, (truth, out)
        assert truth.log[truth.current]["status"] == "success", truth.log
    elif code == 1:
        truth = assert_serves(host, before.current, old)
        assert set(truth.releases) <= set(before.releases), (truth.releases, before.releases, out)
        assert made or not names_release, f"the run does not say which release failed:\n{out}"
        for release in made:
            entry = truth.log.get(release, {})
            assert entry.get("status") in ("failed", "rolled_back") and entry.get("reason"), (release, truth.log, out)
    elif code == 2:
        truth = read_truth(host)
        if truth.lock is not None:
            assert f"fab -H {name} unlock" in out, out
        else:
            assert f"fab -H {name}" in out, out  # says what to run
    elif code in (3, 4):
        truth = assert_serves(host, before.current, old) if before.current else read_truth(host)
        assert (truth.releases, truth.log) == (before.releases, before.log), out
        assert code == 4 or truth.lock is not None, f"exit 3 but nobody holds the lock:\n{out}"
    else:
        raise AssertionError(f"unexpected exit {code}:\n{out}")
    if code in (0, 1, 4):
        assert read_truth(host).lock is None, f"exit {code} but the lock is held:\n{out}"
    return read_truth(host)


# ------------------------------------------------------------------ sockets that misbehave


@contextmanager
def silent_listener(port: int = 0) -> Iterator[int]:
    """A TCP port that accepts connections (kernel backlog) and never answers: a hanging
    health URL, or a port taken before the app binds it. Yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        yield sock.getsockname()[1]
    finally:
        sock.close()


def leave_free(directory: Path, free_bytes: int) -> Path:
    """Fill the filesystem of `directory` until only about `free_bytes` are left."""
    filler = directory / "filler"
    stat = os.statvfs(directory)
    size = max(stat.f_bavail * stat.f_frsize - free_bytes, 0)
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as fh:
        while size > 0:
            try:
                size -= fh.write(chunk[: min(size, len(chunk))])
            except OSError:
                break
    return filler


# ------------------------------------------------------------------ what a paused command was sent


def wait_stdin(paused: Paused, size: int, timeout: float = 30.0) -> None:
    """Block until the stdin pipe of a paused command holds `size` bytes: what the client
    sends on stdin (a password, the migration's env) has all arrived, so the command can
    still run to its end as an orphan once the link is cut."""
    fd = os.open(f"/proc/{paused.pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + timeout
        while True:
            queued = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
            if queued >= size:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the paused command's stdin holds {queued} of {size} bytes after {timeout}s")
            time.sleep(0.02)
    finally:
        os.close(fd)
