"""Host keys: unknown keys are refused (Fabric accepts them silently out of the box),
changed keys always; `fab -H HOST trust` shows a host's key fingerprint and records it.

`trust` checks every key known_hosts records for the address, whatever its type: each one
must still be what the server presents for that type. A server that now presents a key of
another type (ecdsa where ed25519 was known) is refused like a changed key, showing both
fingerprints; only `replace=True` (`fab trust --replace`) swaps the recorded keys for the
presented one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.ssh_exception import IncompatiblePeer

from .errors import PreflightFailed

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
# The host-key algorithms that make a server present a key recorded under this type.
KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"unknown host key for {hostname}")
        self.hostname, self.key = hostname, key


class HostKeyChanged(PreflightFailed):
    """The server presents a key that differs from one known_hosts records: refused."""


class RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Like paramiko's RejectPolicy, but keeps the key so the message can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(hostname, key)


@dataclass(frozen=True)
class KnownKey:
    """A key as known_hosts records it (type and base64 blob), of any type."""

    type: str
    blob: str

    @classmethod
    def of(cls, key: paramiko.PKey) -> KnownKey:
        return cls(key.get_name(), key.get_base64())

    def fingerprint(self) -> str:
        try:
            raw = base64.b64decode(self.blob, validate=True)
        except ValueError:
            return f"{self.type} (unreadable key data)"
        digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
        return f"{self.type} SHA256:{digest}"


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint, e.g. `ssh-ed25519 SHA256:abc...`."""
    return KnownKey.of(key).fingerprint()


def known_hosts_path(configured: str) -> Path:
    return Path(os.path.expanduser(configured or DEFAULT_KNOWN_HOSTS))


def host_entry(hostname: str, port: int) -> str:
    """How known_hosts names a host: `name`, or `[name]:port` off port 22."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def _names_entry(name: str, entry: str) -> bool:
    """Whether one host field of a known_hosts line (plain or hashed `|1|salt|hash`) is `entry`."""
    if name.startswith("|1|"):
        try:
            return paramiko.HostKeys.hash_host(entry, name.split("|")[2]) == name
        except (IndexError, ValueError):
            return False
    return name == entry


def _split(line: str) -> tuple[list[str], KnownKey] | None:
    """Host names and key of a known_hosts line (None for comments, markers, junk)."""
    fields = line.split()
    if len(fields) < 3 or fields[0].startswith(("#", "@")):
        return None
    return fields[0].split(","), KnownKey(fields[1], fields[2])


def recorded_keys(known_hosts: Path, entry: str) -> list[KnownKey]:
    """Every key known_hosts records for `entry`, whatever its type."""
    if not known_hosts.is_file():
        return []
    found = []
    for line in known_hosts.read_text(errors="replace").splitlines():
        parsed = _split(line)
        if parsed and any(_names_entry(name, entry) for name in parsed[0]):
            found.append(parsed[1])
    return found


def _handshake(hostname: str, port: int, timeout: float, algorithms: list[str] | None = None) -> paramiko.PKey:
    """The key the server presents to a client offering `algorithms` (default: paramiko's)."""
    with socket.create_connection((hostname, port), timeout=timeout) as sock:
        transport = paramiko.Transport(sock)
        try:
            if algorithms is not None:
                transport.get_security_options().key_types = algorithms
            transport.start_client(timeout=timeout)
            return transport.get_remote_server_key()
        finally:
            transport.close()


def fetch_host_key(hostname: str, port: int, timeout: float) -> paramiko.PKey:
    """The key the server presents (no authentication happens)."""
    try:
        return _handshake(hostname, port, timeout)
    except (OSError, paramiko.SSHException) as exc:
        raise PreflightFailed(f"cannot reach {hostname}:{port} to read its host key: {exc}") from None


def _key_of_type(hostname: str, port: int, timeout: float, key_type: str) -> KnownKey | None:
    """The server's key of a recorded type; None when it offers none (or paramiko cannot ask)."""
    try:
        return KnownKey.of(_handshake(hostname, port, timeout, list(KEY_ALGORITHMS.get(key_type, (key_type,)))))
    except (IncompatiblePeer, ValueError):  # ValueError: a type paramiko does not know
        return None
    except (OSError, paramiko.SSHException) as exc:
        raise PreflightFailed(f"cannot reach {hostname}:{port} to read its host key: {exc}") from None


def trust(hostname: str, port: int, known_hosts: Path, timeout: float, replace: bool = False) -> str:
    """Record the host's key in known_hosts. Refuses when any key already recorded for the
    address differs from what the server presents for that type (or the server no longer
    offers that type), unless `replace`: then the recorded keys make way for the presented one."""
    entry = host_entry(hostname, port)
    presented = KnownKey.of(fetch_host_key(hostname, port, timeout))
    recorded = recorded_keys(known_hosts, entry)
    if not recorded:
        _append(known_hosts, entry, presented)
        return f"trusted {entry}: {presented.fingerprint()} (added to {known_hosts})"
    changed = [old for old in recorded if _presents(hostname, port, timeout, old, presented) != old]
    if not changed:
        return f"{entry} is already trusted: {', '.join(k.fingerprint() for k in recorded)}"
    olds = ", ".join(k.fingerprint() for k in changed)
    if not replace:
        raise HostKeyChanged(
            f"{entry} presents {presented.fingerprint()} but {known_hosts} records {olds}: the host key CHANGED "
            "(or another server answers on that address). Refusing. If the change is expected (the host was "
            "reinstalled), check the new fingerprint out of band, then run trust with --replace."
        )
    _rewrite(known_hosts, entry, presented)
    return f"replaced the key of {entry} in {known_hosts}: was {olds}, now {presented.fingerprint()}"


def _presents(hostname: str, port: int, timeout: float, old: KnownKey, presented: KnownKey) -> KnownKey | None:
    """What the server presents for the type of a recorded key (one more handshake if needed)."""
    return presented if old.type == presented.type else _key_of_type(hostname, port, timeout, old.type)


def _append(known_hosts: Path, entry: str, key: KnownKey) -> None:
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    text = known_hosts.read_text(errors="replace") if known_hosts.is_file() else ""
    prefix = "\n" if text and not text.endswith("\n") else ""
    with known_hosts.open("a") as fh:
        fh.write(f"{prefix}{entry} {key.type} {key.blob}\n")


def _rewrite(known_hosts: Path, entry: str, key: KnownKey) -> None:
    """known_hosts without `entry` on any line (other hosts of a line stay), plus the new key;
    written to a temp file and renamed over the old one."""
    lines = []
    for line in known_hosts.read_text(errors="replace").splitlines():
        parsed = _split(line)
        if parsed and any(_names_entry(name, entry) for name in parsed[0]):
            others = [name for name in parsed[0] if not _names_entry(name, entry)]
            if not others:
                continue
            line = " ".join([",".join(others), *line.split()[1:]])
        lines.append(line)
    lines.append(f"{entry} {key.type} {key.blob}")
    fd, tmp = tempfile.mkstemp(dir=known_hosts.parent, prefix=".known_hosts.")
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(tmp, known_hosts.stat().st_mode & 0o777)
    os.replace(tmp, known_hosts)
