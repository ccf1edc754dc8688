"""The HTTP probe: GET until the app answers as expected, from the controller (urllib)
or on the host with curl (for apps bound to loopback); retries with backoff and an
overall timeout. A failure reports the last status and a body excerpt."""

from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import StepFailed
from ..inventory import HealthSettings, Target
from ..remote import Remote

q = shlex.quote
STATUS_MARK = "\n__SHIPFAB_STATUS__ "


@dataclass(frozen=True)
class Probe:
    ok: bool
    status: int | None  # None: no HTTP answer at all
    latency: float
    detail: str


def health_url(health: HealthSettings, target: Target) -> str:
    """The URL with `{hostname}` filled in, so one app setting serves every host."""
    return health.url.replace("{hostname}", target.hostname)


def curl_cmd(request_timeout: float) -> str:
    """curl reads the URL from a config on stdin (`curl_config`): it may hold a secret."""
    return f"curl -sS --max-time {request_timeout:g} -w {q(STATUS_MARK + '%{http_code}')} --config -"


def curl_config(url: str) -> str:
    """The curl config line naming the URL (quoted as curl's config syntax wants)."""
    return 'url = "' + url.replace("\\", "\\\\").replace('"', '\\"') + '"\n'


def parse_curl(stdout: str) -> tuple[int | None, str]:
    body, _, code = stdout.rpartition(STATUS_MARK)
    try:
        status = int(code.strip())
    except ValueError:
        return None, stdout
    return (status or None), body


def json_field(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def evaluate(health: HealthSettings, status: int | None, body: str,
             mask: Callable[[str], str] | None = None) -> tuple[bool, str]:
    """Does this answer count as healthy? The reason says what was expected and found.
    `mask` (the redaction filter) runs on the body before its excerpt is cut and quoted:
    afterwards a secret would be half gone or escaped twice, and no longer recognized."""
    excerpt = " ".join((mask(body) if mask else body).split())[:200]
    if status is None:
        return False, f"no HTTP answer: {excerpt or 'connection failed'}"
    if status != health.status:
        return False, f"status {status} (expected {health.status}); body: {excerpt!r}"
    if health.body and health.body not in body:
        return False, f"body does not contain {health.body!r}; body: {excerpt!r}"
    if health.json:
        try:
            data = json.loads(body)
        except ValueError:
            return False, f"body is not JSON; body: {excerpt!r}"
        for key, want in health.json.items():
            got = json_field(data, key)
            if got != want:
                return False, f"JSON field {key!r} is {got!r} (expected {want!r})"
    return True, f"status {status}"


def http_get(url: str, timeout: float) -> tuple[int | None, str]:
    """(status, body) of one GET; (None, why) when there is no HTTP answer."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read(65536).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(65536).decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def probe_once(remote: Remote, target: Target) -> Probe:
    """One HTTP request, from wherever the app's health settings say."""
    health = target.app.health
    url = health_url(health, target)
    started = time.monotonic()
    if health.via == "host":
        res = remote.run(curl_cmd(health.request_timeout), change=False, warn=True, stdin=curl_config(url))
        status, body = parse_curl(res.stdout)
        if status is None and res.stderr.strip():
            body = res.stderr.strip()
    else:
        status, body = http_get(url, health.request_timeout)
    ok, detail = evaluate(health, status, body, remote.printer.redact)
    return Probe(ok=ok, status=status, latency=time.monotonic() - started, detail=detail)


def wait_healthy(remote: Remote, target: Target, timeout: float | None = None) -> Probe:
    """Probe with backoff (0.1 s doubling to 2 s) until healthy or the timeout (0: one probe); raise with the
    last answer."""
    health = target.app.health
    if remote.dry_run:
        how = "curl on the host" if health.via == "host" else "GET from the controller"
        remote.printer.line(f"would check: {how} {health_url(health, target)} expecting {health.status}", remote.host, level=0)
        return Probe(ok=True, status=None, latency=0.0, detail="dry-run")
    deadline = time.monotonic() + (timeout if timeout is not None else health.timeout)
    delay, attempts = 0.1, 0
    while True:
        attempts += 1
        probe = probe_once(remote, target)
        if probe.ok or time.monotonic() + delay > deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
    if not probe.ok:
        tries = f"unhealthy after {attempts} attempts: " if attempts > 1 else ""  # one (timeout 0): the answer says it
        raise StepFailed(f"{remote.host}: {tries}{probe.detail}")
    return probe
