"""boot_check: prove a release boots and serves before any gunicorn process is touched.

On the host, in the release directory (as gunicorn's `--chdir`), the release's own venv
python imports the WSGI app named by `gunicorn.app_module` and calls it in process for a
GET of the health URL's path (boot_probe.py). Importing gets the worker timeout
(`gunicorn.timeout`: gunicorn would kill a worker that loads longer), the request gets
`health.request_timeout`; `timeout(1)` bounds the whole. The answer is judged like the
health check's (status, body, JSON). A failure shows the app's own exception line and the
last traceback lines.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import StepFailed
from ..inventory import App
from ..layout import Layout
from ..probes.http import evaluate, health_url
from ..remote import Remote

q = shlex.quote
PROBE = (Path(__file__).with_name("boot_probe.py")).read_text()
GRACE = 5  # seconds past the probe's own limits before timeout(1) kills it


def time_limit(app: App) -> float:
    """How long the probe may run in all (import + request + grace)."""
    return app.gunicorn.timeout + app.health.request_timeout + GRACE


def boot_check_script(app: App, layout: Layout, release_id: str) -> str:
    """cd into the release and run the probe with the release's python, under timeout(1).
    The health URL goes on its stdin: it may hold a secret, and a command line is public."""
    rel = layout.release(release_id)
    args = [app.gunicorn.app_module, f"{app.gunicorn.timeout:g}", f"{app.health.request_timeout:g}"]
    return (f"cd {q(rel)} && exec timeout -k 2 {time_limit(app):g} {q(rel + '/.venv/bin/python')} -c {q(PROBE)} "
            + shlex.join(args))


def parse_probe(stdout: str) -> tuple[str, dict[str, Any]] | None:
    """The probe's last marker line: ("BOOT_RESULT" | "BOOT_ERROR", its JSON), or None."""
    for line in reversed(stdout.splitlines()):
        kind, _, data = line.partition(" ")
        if kind in ("BOOT_RESULT", "BOOT_ERROR"):
            try:
                return kind, json.loads(data)
            except ValueError:
                return None
    return None


def boot_check(remote: Remote, app: App, layout: Layout, release_id: str) -> str:
    """Run the probe for `release_id`; return e.g. "imports and answers /health 200 in 0.31 s"."""
    url = health_url(app.health, remote.target)
    path = urlsplit(url).path or "/"
    if remote.dry_run:
        remote.printer.line(f"would check: {release_id} imports {app.gunicorn.app_module} and answers GET {path}",
                            remote.host, level=0)
        return "dry-run"
    res = remote.run(boot_check_script(app, layout, release_id), warn=True, timeout=time_limit(app) + 15,
                     stdin=url + "\n")
    found = parse_probe(res.stdout)
    where = f"{remote.host}: release {release_id}"
    if found is None:
        killed = f"killed after {time_limit(app):g} s, " if res.exited in (124, 137) else ""
        tail = "\n".join((res.stderr.strip() or res.stdout.strip()).splitlines()[-8:])
        raise StepFailed(f"{where} failed its boot check ({killed}exit {res.exited}):\n{tail}")
    kind, info = found
    if kind == "BOOT_ERROR":
        trace = "".join(f"\n    {line}" for line in info["trace"])
        what = "does not import" if info["phase"] == "import" else f"fails on GET {path}"
        raise StepFailed(f"{where} {what} ({app.gunicorn.app_module}): {info['error']}{trace}")
    ok, reason = evaluate(app.health, info["status"], info["body"], remote.printer.redact)
    if not ok:
        raise StepFailed(f"{where} imports, but GET {path} in process answers {reason}")
    return f"imports and answers {path} {info['status']} in {info['seconds']:.2f} s"
