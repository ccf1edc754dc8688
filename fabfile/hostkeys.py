"""Host keys: unknown keys are refused (Fabric accepts them silently out of the box),
changed keys always; `fab -H HOST trust` shows a host's key fingerprint and records it."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
from pathlib import Path

import paramiko

from .errors import ShipfabError

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"unknown host key for {hostname}")
        self.hostname, self.key = hostname, key


class RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
    """Like paramiko's RejectPolicy, but keeps the key so the message can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(hostname, key)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint, e.g. `ssh-ed25519 SHA256:abc...`."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def known_hosts_path(configured: str) -> Path:
    return Path(os.path.expanduser(configured or DEFAULT_KNOWN_HOSTS))


def host_entry(hostname: str, port: int) -> str:
    """How known_hosts names a host: `name`, or `[name]:port` off port 22."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def fetch_host_key(hostname: str, port: int, timeout: float) -> paramiko.PKey:
    """The key the server presents (no authentication happens)."""
    try:
        with socket.create_connection((hostname, port), timeout=timeout) as sock:
            transport = paramiko.Transport(sock)
            try:
                transport.start_client(timeout=timeout)
                return transport.get_remote_server_key()
            finally:
                transport.close()
    except (OSError, paramiko.SSHException) as exc:
        raise ShipfabError(f"cannot reach {hostname}:{port} to read its host key: {exc}") from None


def trust(hostname: str, port: int, known_hosts: Path, timeout: float) -> str:
    """Record the host's key in known_hosts; refuses when a *different* key is already recorded."""
    key = fetch_host_key(hostname, port, timeout)
    entry = host_entry(hostname, port)
    keys = paramiko.HostKeys(str(known_hosts)) if known_hosts.is_file() else paramiko.HostKeys()
    recorded = keys.lookup(entry) or {}
    if key.get_name() in recorded:
        if recorded[key.get_name()] == key:
            return f"{entry} is already trusted: {fingerprint(key)}"
        raise ShipfabError(
            f"{entry} presents {fingerprint(key)} but {known_hosts} records {fingerprint(recorded[key.get_name()])}: "
            "the host key CHANGED. If that is expected, delete the old line first (ssh-keygen -R)."
        )
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with known_hosts.open("a") as fh:
        fh.write(f"{entry} {key.get_name()} {key.get_base64()}\n")
    return f"trusted {entry}: {fingerprint(key)} (added to {known_hosts})"
