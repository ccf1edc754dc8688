"""The remote shared/.env: read it (values stay hidden), replace it atomically (0600),
keeping the previous one as .env.previous."""

from __future__ import annotations

import shlex

from ..layout import Layout
from ..remote import Remote
from ..secret_rule import parse_env

q = shlex.quote


def env_path(layout: Layout) -> str:
    return f"{layout.shared}/.env"


def prepare_upload_cmd(layout: Layout, tmp: str) -> str:
    """Create the upload target 0600 first, so the secrets are never readable by others."""
    return f"mkdir -p {q(layout.shared)} && (umask 077 && : > {q(tmp)})"


def install_cmd(layout: Layout, tmp: str) -> str:
    env = env_path(layout)
    return (f"chmod 600 {q(tmp)} && {{ [ ! -f {q(env)} ] || cp -p {q(env)} {q(env + '.previous')}; }} && "
            f"mv -f {q(tmp)} {q(env)}")


def read_cmd(layout: Layout) -> str:
    return f"cat {q(env_path(layout))} 2>/dev/null || true"


def read_remote_env(remote: Remote, layout: Layout) -> dict[str, str]:
    """The host's .env as a dict; its values are added to the redaction filter at once."""
    text = remote.run(read_cmd(layout), change=False, show_output=False).stdout
    values = parse_env(text, f"{remote.host}:{env_path(layout)}")
    remote.printer.redact.add_env(values, remote.target.app)
    return values


def push(remote: Remote, layout: Layout, local_file: str, upload_id: str) -> None:
    tmp = f"{env_path(layout)}.upload-{upload_id}"
    remote.run(prepare_upload_cmd(layout, tmp))
    remote.put(local_file, tmp)
    remote.run(install_cmd(layout, tmp))
