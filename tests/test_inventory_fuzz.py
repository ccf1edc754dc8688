"""Malformed inventories through the real `fab` CLI: each gives exit 64 and exactly one
`shipfab:` line naming the file and the problem, never a traceback.

Covers issue 12's crashes: binary and Latin-1 files (UnicodeDecodeError), 3,000 nested
arrays (RecursionError), nan/inf timeouts, and numbers accepted out of range
(`port = 99999`, `workers = 0`, `workers = 9223372036854775807`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import FAB, REPO
from .test_inventory import GOOD

DB = '\n[apps.web.database]\nengine = "postgresql"\n'


def good(old: str, new: str) -> bytes:
    """GOOD with one exact replacement (the replaced text must be there)."""
    assert old in GOOD, old
    return GOOD.replace(old, new, 1).encode()


def app_key(line: str) -> bytes:
    """GOOD with one more line in [apps.web]."""
    return good('stack = "gunicorn"', f'stack = "gunicorn"\n{line}')


CASES: dict[str, tuple[bytes, str]] = {
    # Not text, or not UTF-8 text.
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe\x00IHDR", "not UTF-8 text"),
    "latin-1": (GOOD.replace('user = "deploy"', 'user = "d\u00e9ploy"').encode("latin-1"), "not UTF-8 text"),
    "utf-16": (GOOD.encode("utf-16"), "not UTF-8 text"),
    "nul byte": (GOOD.encode() + b"\x00\n", "not valid TOML"),
    "empty file": (b"", "no app can be chosen"),
    "not toml": (b"default = [", "not valid TOML"),
    "duplicate key": (good('hostname = "10.0.0.1"', 'hostname = "10.0.0.1"\nhostname = "x"'), "not valid TOML"),
    "integer too long to convert": (b"x = " + b"9" * 5000, "not valid TOML"),
    # Nesting.
    "3000 nested arrays": (b"x = " + b"[" * 3000 + b"]" * 3000, "not valid TOML: nested too deeply"),
    "3000 nested tables": (b"x = " + b"{a = " * 3000 + b"1" + b"}" * 3000, "not valid TOML"),
    "40 nested arrays in a known key": (
        good("[apps.web.gunicorn]", "[apps.web.gunicorn]\nargs = " + "[" * 40 + "]" * 40), "nested more than"
    ),
    "100 nested table headers": (b"[" + b".".join([b"a"] * 100) + b"]\nx = 1\n", "nested more than"),
    # Numbers out of range, not finite, huge.
    "connect_timeout nan": (good('user = "deploy"', 'user = "deploy"\nconnect_timeout = nan'),
                            "defaults.connect_timeout: must be a finite number, got nan"),
    "restart_timeout inf": (good('manager = "supervisor"', 'manager = "supervisor"\nrestart_timeout = inf'),
                            "apps.web.gunicorn.restart_timeout: must be a finite number, got inf"),
    "restart_timeout -inf": (good('manager = "supervisor"', 'manager = "supervisor"\nrestart_timeout = -inf'),
                             "restart_timeout: must be a finite number"),
    "port 99999": (good("port = 2222", "port = 99999"), "hosts.web2.port: must be at least 1 and at most 65535"),
    "port 0": (good("port = 2222", "port = 0"), "hosts.web2.port: must be at least 1"),
    "port -1": (good("port = 2222", "port = -1"), "hosts.web2.port: must be at least 1"),
    "port of 70 bits": (good("port = 2222", "port = 0x" + "f" * 18), "hosts.web2.port: must be at least 1"),
    "workers 0": (good('manager = "supervisor"', 'manager = "supervisor"\nworkers = 0'),
                  "apps.web.gunicorn.workers: must be at least 1 and at most 256"),
    "workers int64 max": (good('manager = "supervisor"', 'manager = "supervisor"\nworkers = 9223372036854775807'),
                          "apps.web.gunicorn.workers: must be at least 1 and at most 256"),
    "workers of 20000 bits": (good('manager = "supervisor"', 'manager = "supervisor"\nworkers = 0x' + "f" * 5000),
                              "apps.web.gunicorn.workers: must be at least 1 and at most 256, got a 20000-bit integer"),
    "workers override -1": (good("workers = 4", "workers = -1"), "hosts.web2.overrides.gunicorn.workers: must be"),
    "gunicorn timeout 0": (good('manager = "supervisor"', 'manager = "supervisor"\ntimeout = 0'),
                           "apps.web.gunicorn.timeout: must be more than 0"),
    "health timeout negative": (good('url = "http', 'timeout = -5\nurl = "http'), "apps.web.health.timeout: must be more"),
    "request_timeout 1e308": (good('url = "http', 'request_timeout = 1e308\nurl = "http'),
                              "apps.web.health.request_timeout: must be more than 0 and at most 86400"),
    "health status 99": (good('url = "http', 'status = 99\nurl = "http'), "apps.web.health.status: must be at least 100"),
    "keep_releases 1": (app_key("keep_releases = 1"), "apps.web.keep_releases: must be at least 2"),
    "keep_releases 10**12": (app_key("keep_releases = 1000000000000"), "apps.web.keep_releases: must be at least 2"),
    "keep_backups 0": (GOOD.replace("[hosts.web1]", DB + "keep_backups = 0\n[hosts.web1]").encode(),
                       "apps.web.database.keep_backups: must be at least 1"),
    "database port 70000": (GOOD.replace("[hosts.web1]", DB + "port = 70000\n[hosts.web1]").encode(),
                            "apps.web.database.port: must be at least 0 and at most 65535"),
    "min_disk_percent 101": (app_key("preflight = { min_disk_percent = 101 }"),
                             "apps.web.preflight.min_disk_percent: must be at least 0 and at most 100"),
    "notify timeout nan": (app_key("notify = { timeout = nan }"), "apps.web.notify.timeout: must be a finite number"),
    # Wrong types.
    "port as string": (good("port = 2222", 'port = "2222"'), "hosts.web2.port: expected integer, got string"),
    "workers float": (good("workers = 4", "workers = 2.5"), "workers: expected integer, got number 2.5"),
    "workers bool": (good("workers = 4", "workers = true"), "workers: expected integer, got boolean"),
    "hosts an array": (b'hosts = [1, 2]\n', "hosts: expected table, got array"),
    "app a string": (b'apps = { web = "x" }\n', "apps.web: expected table, got string"),
    "group a string": (good('prod = ["web1", "web2"]', 'prod = "web1"'), "groups.prod: expected array, got string"),
    "hostname a datetime": (good('hostname = "10.0.0.1"', "hostname = 1979-05-27T07:32:00Z"),
                            "hosts.web1.hostname: expected string, got datetime"),
    "secret_keys a string": (app_key('secret_keys = "API"'), "apps.web.secret_keys: expected array, got string"),
    "public_keys of ints": (app_key("public_keys = [1]"), "apps.web.public_keys[0]: expected string, got integer"),
    "gunicorn args of ints": (good('manager = "supervisor"', 'manager = "supervisor"\nargs = [1]'),
                              "apps.web.gunicorn.args[0]: expected string"),
    "secret marker of an int": (good('hostname = "10.0.0.1"', "hostname = { secret = 5 }"),
                                "hosts.web1.hostname: expected string, got table"),
    # Strings that are not what they claim to be.
    "hostname an ssh option": (good('hostname = "10.0.0.1"', 'hostname = "-oProxyCommand=touch /tmp/pwn"'),
                               "hosts.web1.hostname: not a valid hostname"),
    "user with a space": (good('user = "deploy"', 'user = "de ploy"'), "defaults.user: not a valid user"),
    "hostname with NUL": (good('hostname = "10.0.0.1"', 'hostname = "10.0.0.1\\u0000"'),
                          "hosts.web1.hostname: contains a control character"),
    "host name with a newline": (b'[hosts."a\\nb"]\nhostname = "h"\n' + GOOD.encode(), 'hosts."a\\nb"'),
    "megabyte manager": (good('manager = "supervisor"', 'manager = "' + "x" * 1_000_000 + '"'),
                         "apps.web.gunicorn.manager: unknown value 'xxxx"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_inventory_gives_one_line_and_exit_64(tmp_path: Path, case: str) -> None:
    content, expected = CASES[case]
    path = tmp_path / "hosts.toml"
    path.write_bytes(content)
    res = subprocess.run([*FAB, "-r", str(REPO), "-H", "x", "check"], capture_output=True, text=True,
                         env={**os.environ, "SHIPFAB_HOSTS": str(path)}, cwd=tmp_path, stdin=subprocess.DEVNULL,
                         timeout=60)
    output = res.stdout + res.stderr
    assert "Traceback" not in output, output[-3000:]
    assert res.returncode == 64, output[-3000:]
    lines = output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"shipfab: {path}: "), output[:3000]
    assert expected in lines[0], lines[0][:3000]
    assert len(lines[0]) < 1000  # a huge value is shortened, not echoed


def test_fuzz_covers_at_least_40_inventories() -> None:
    assert len(CASES) >= 40
