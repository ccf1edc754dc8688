"""`trust` against a real sshd: an impostor presenting a key of another type on the same
address is refused (issue 12: ed25519 known, ecdsa presented, and trust added it).
Replacing takes `replace=True` (`fab trust --replace`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import paramiko
import pytest

from fabfile.hostkeys import HostKeyChanged, KnownKey, host_entry, recorded_keys, trust

from .services import Sshd, SshKeys, make_ssh_keys


def host_key(path: Path, key_type: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(path)], check=True, capture_output=True)
    return path


def public(path: Path) -> KnownKey:
    key_type, blob = path.with_name(path.name + ".pub").read_text().split()[:2]
    return KnownKey(key_type, blob)


@pytest.fixture
def sshd(tmp_path):
    server = Sshd.start(tmp_path / "sshd", make_ssh_keys(tmp_path / "keys"))
    yield server
    server.stop()


def restart_with(server: Sshd, tmp: Path, key: Path) -> Sshd:
    """The same address, now answered by an sshd with another host key."""
    server.stop()
    keys = SshKeys(server.keys.client_key, server.keys.client_pub, key)
    return Sshd.start(tmp / f"sshd-{key.name}", keys, port=server.port)


def test_unknown_key_is_added_then_known(sshd, tmp_path):
    known = tmp_path / "kh" / "known_hosts"
    assert "trusted [127.0.0.1]" in trust(sshd.hostname, sshd.port, known, 5)
    assert recorded_keys(known, host_entry(sshd.hostname, sshd.port)) == [public(sshd.keys.host_key)]
    assert "already trusted" in trust(sshd.hostname, sshd.port, known, 5)


@pytest.mark.parametrize("new_type", ["ecdsa", "ed25519"])
def test_a_different_key_of_any_type_is_refused_then_replaced_on_request(sshd, tmp_path, new_type):
    known = tmp_path / "known_hosts"
    entry = host_entry(sshd.hostname, sshd.port)
    other = "other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    known.write_text(f"# mine\n{other}\n{entry},shared.example {sshd.host_pubkey_line}\n")
    old = public(sshd.keys.host_key)
    impostor = restart_with(sshd, tmp_path, host_key(tmp_path / f"new_{new_type}", new_type))
    try:
        new = public(impostor.keys.host_key)
        with pytest.raises(HostKeyChanged) as info:
            trust(impostor.hostname, impostor.port, known, 5)
        message = str(info.value)
        assert new.fingerprint() in message and old.fingerprint() in message and "CHANGED" in message
        assert recorded_keys(known, entry) == [old]  # nothing written

        # The tasks' own connections refuse it too (paramiko compares every recorded type).
        client = paramiko.SSHClient()
        client.load_host_keys(str(known))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        with pytest.raises(paramiko.BadHostKeyException):
            client.connect(impostor.hostname, impostor.port, key_filename=impostor.key_filename,
                           look_for_keys=False, allow_agent=False, timeout=5)
        client.close()

        assert "replaced the key" in trust(impostor.hostname, impostor.port, known, 5, replace=True)
        assert recorded_keys(known, entry) == [new]
        lines = known.read_text().splitlines()
        assert lines[:2] == ["# mine", other]  # other hosts' lines are kept
        assert f"shared.example {sshd.host_pubkey_line}" in lines  # so is a co-listed name
        assert "already trusted" in trust(impostor.hostname, impostor.port, known, 5)
    finally:
        impostor.stop()


def test_hashed_known_hosts_entry_is_checked_too(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text(f"{host_entry(sshd.hostname, sshd.port)} {sshd.host_pubkey_line}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
    assert known.read_text().startswith("|1|")
    impostor = restart_with(sshd, tmp_path, host_key(tmp_path / "new_ecdsa", "ecdsa"))
    try:
        with pytest.raises(HostKeyChanged, match=re.escape(public(sshd.keys.host_key).fingerprint())):
            trust(impostor.hostname, impostor.port, known, 5)
    finally:
        impostor.stop()
