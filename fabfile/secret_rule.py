"""Which values are secret, and every form in which one can be printed.

The rule (README, "Secrets"):

- a `.env` value is secret when its key matches SECRET_NAME (SECRET, PASSWORD, PASSWD,
  TOKEN, KEY, CREDENTIAL, AUTH, PRIVATE, DSN, CERT, any case), or is listed in the app's
  `secret_keys`, unless the app lists it in `public_keys`; a boolean word (`true`, `off`...)
  is never a secret;
- the password of any URL (`scheme://user:PASSWORD@host`) in a `.env` value or in
  hosts.toml is secret, whatever the key (even a public one);
- every hosts.toml value written `{ secret = "..." }`, and the database password;
- values shorter than MIN_LENGTH characters are not masked (masking them would mask ordinary
  words); every other secret is masked in each form of `secret_forms`.

`.env` files are parsed by python-dotenv, as the app reads them; nothing here evaluates them.
"""

from __future__ import annotations

import io
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from dotenv.parser import parse_stream

from .errors import UsageError

SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE|DSN|CERT", re.IGNORECASE)
NOT_SECRET = frozenset({"true", "false", "yes", "no", "on", "off", "none", "null"})
MIN_LENGTH = 4
# scheme://user:password@host — userinfo runs to the last "@" before the path. The scheme
# starts where no scheme character precedes it: linear time on megabytes of letters.
URL_USERINFO = re.compile(r"(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://([^\s/?#]*)@")


def url_passwords(value: str) -> list[str]:
    """The passwords of the URLs in a value, as written (`p%40ss` stays encoded)."""
    if "://" not in value:
        return []
    return [info.split(":", 1)[1] for info in URL_USERINFO.findall(value) if ":" in info and info.split(":", 1)[1]]


def is_secret_key(key: str, public: Iterable[str] = (), secret: Iterable[str] = ()) -> bool:
    """Whether a .env key holds a secret: its name says so or the app lists it, unless listed public."""
    if key in set(public):
        return False
    return key in set(secret) or SECRET_NAME.search(key) is not None


def env_secrets(values: Mapping[str, str], public: Iterable[str] = (), secret: Iterable[str] = ()) -> list[str]:
    """The secret values of a parsed .env: whole values of secret keys, URL passwords of all."""
    public, secret = set(public), set(secret)
    found: list[str] = []
    for key, value in values.items():
        if is_secret_key(key, public, secret) and value.strip().lower() not in NOT_SECRET:
            found.append(value)
        found.extend(url_passwords(value))
    return found


def secret_forms(value: str) -> set[str]:
    """Every form of a secret that output may contain: raw, URL-decoded, URL-encoded,
    JSON-escaped, Python-repr-escaped and shell-quoted, and for a multi-line value each line."""
    if len(value) < MIN_LENGTH:
        return set()
    bases = {value, unquote(value), unquote_plus(value)}
    bases |= {line for base in bases for line in base.splitlines() if len(line) >= 2 * MIN_LENGTH}
    forms: set[str] = set()
    for base in bases:
        forms |= {
            base,
            quote(base, safe=""),
            quote(base),
            quote_plus(base),
            json.dumps(base)[1:-1],
            json.dumps(base, ensure_ascii=False)[1:-1],
            repr(base)[1:-1],
            shlex.quote(base),
        }
    return {form for form in forms if len(form) >= MIN_LENGTH}


def unwrap_marked(data: Any, found: set[str]) -> Any:
    """Replace every `{ secret = "value" }` table by its value, collecting the values and the
    passwords of URLs anywhere in the data."""
    if isinstance(data, dict):
        if set(data) == {"secret"} and isinstance(data["secret"], str):
            found.add(data["secret"])
            return data["secret"]
        return {k: unwrap_marked(v, found) for k, v in data.items()}
    if isinstance(data, list):
        return [unwrap_marked(v, found) for v in data]
    if isinstance(data, str):
        found.update(url_passwords(data))
    return data


def parse_env(text: str, source: str = ".env") -> dict[str, str]:
    """KEY -> value of a .env text, exactly as python-dotenv (and so the app) reads it;
    a syntax error names the line."""
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            raise UsageError(f"{source}: line {line}: cannot parse {binding.original.string.strip()[:40]!r}")
        if binding.key is not None:
            values[binding.key] = binding.value or ""
    return values


def local_env(path: Path = Path(".env")) -> dict[str, str]:
    """The controller's .env (empty when there is none or it does not parse)."""
    if not path.is_file():
        return {}
    try:
        return parse_env(path.read_text(errors="replace"), str(path))
    except UsageError:
        return {}


def local_env_values(path: Path = Path(".env")) -> list[str]:
    """The secret values of the controller's .env by the name rule (before any app is known)."""
    return env_secrets(local_env(path))


def env_diff(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    """Keys added, removed and changed: names only, never values."""
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k]),
    }
