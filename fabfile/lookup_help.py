"""What shipfab says when it cannot find what a command names: a -H name that neither
hosts.toml nor ssh config nor DNS knows (the known names, a close match first), and an
inventory that is not where it looked (saying where it looked, and how to point elsewhere)."""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path

import paramiko

from .errors import InventoryError, UsageError
from .inventory import Inventory, Target, inventory_path

SSH_CONFIG = Path("~/.ssh/config")
FABFILE_DIR = Path(__file__).resolve().parent


def ssh_config_knows(name: str, config_path: Path = SSH_CONFIG) -> bool:
    """True when ~/.ssh/config names `name` in a Host line or maps it to another hostname."""
    path = config_path.expanduser()
    if not path.is_file():
        return False
    try:
        config = paramiko.SSHConfig.from_path(str(path))
    except (OSError, paramiko.ConfigParseError):
        return False
    return name in config.get_hostnames() or config.lookup(name).get("hostname", name) != name


def dns_knows(name: str) -> bool:
    try:
        socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return False
    return True


def unknown_name_message(inventory: Inventory, name: str) -> str:
    """One line: `name` is nowhere; the known hosts and groups, the closest first."""
    close = difflib.get_close_matches(name, inventory.names(), n=3, cutoff=0.5)
    hint = f"Did you mean {' or '.join(close)}? " if close else ""
    hosts = ", ".join(sorted(inventory.targets)) or "(none)"
    groups = ", ".join(sorted(inventory.groups)) or "(none)"
    return (f"unknown host or group {name!r}: not in {inventory.path}, ~/.ssh/config or DNS. {hint}"
            f"Known hosts: {hosts}; groups: {groups}")


def check_known(inventory: Inventory, targets: list[Target]) -> None:
    """UsageError for a name that fell through to ssh but that ssh could not resolve either."""
    for target in targets:
        if target.ssh_alias and not ssh_config_knows(target.name) and not dns_knows(target.hostname):
            raise UsageError(unknown_name_message(inventory, target.name))


def inventory_missing_message() -> str | None:
    """None when the inventory exists, else where shipfab looked for it (and for its tasks)."""
    path = inventory_path()
    if path.is_file():
        return None
    if os.environ.get("SHIPFAB_HOSTS"):
        where = f"SHIPFAB_HOSTS={os.environ['SHIPFAB_HOSTS']} names no file"
    else:
        where = f"no hosts.toml in the current directory ({Path.cwd()}) and SHIPFAB_HOSTS is not set"
    return (f"inventory not found: {where}. shipfab's tasks are in {FABFILE_DIR}; run from the checkout that "
            f"holds hosts.toml, use its wrapper from anywhere ({FABFILE_DIR.parent}/fab ...), "
            "or set SHIPFAB_HOSTS=/path/to/hosts.toml")


def require_inventory() -> None:
    """InventoryError naming where shipfab looked, before the inventory is read."""
    message = inventory_missing_message()
    if message:
        raise InventoryError(message)
