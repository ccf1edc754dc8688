"""Secret values: which ones shipfab knows (so output can mask them) and .env parsing.

Known secrets come from three places: values of `.env` files (the local one and each
host's shared/.env), database passwords, and any hosts.toml value written as
`{ secret = "..." }`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from dotenv.parser import parse_stream

from .errors import UsageError


def unwrap_marked(data: Any, found: set[str]) -> Any:
    """Replace every `{ secret = "value" }` table by its value, collecting the values."""
    if isinstance(data, dict):
        if set(data) == {"secret"} and isinstance(data["secret"], str):
            found.add(data["secret"])
            return data["secret"]
        return {k: unwrap_marked(v, found) for k, v in data.items()}
    if isinstance(data, list):
        return [unwrap_marked(v, found) for v in data]
    return data


def secret_parts(value: str) -> list[str]:
    """A value and, for a URL with credentials (postgresql://u:pw@h/db), its password too."""
    parts = [value]
    if "://" in value and "@" in value:
        credentials = value.split("://", 1)[1].rsplit("@", 1)[0]
        if ":" in credentials:
            parts.append(credentials.split(":", 1)[1])
    return parts


def parse_env(text: str, source: str = ".env") -> dict[str, str]:
    """KEY -> value of a .env text; a syntax error names the line."""
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            raise UsageError(f"{source}: line {line}: cannot parse {binding.original.string.strip()[:40]!r}")
        if binding.key is not None:
            values[binding.key] = binding.value or ""
    return values


def local_env_values(path: Path = Path(".env")) -> list[str]:
    """Values of the controller's .env (if any), to be masked in output."""
    if not path.is_file():
        return []
    try:
        return list(parse_env(path.read_text(), str(path)).values())
    except UsageError:
        return []


def env_diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """Keys added, removed and changed: names only, never values."""
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k]),
    }
