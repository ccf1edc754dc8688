"""The streamlit boot check: before any instance restarts, the release's own python compiles
the script (`compile()`, as `py_compile` does, writing nothing) and, unless `streamlit.boot_check = false`, runs it once with
streamlit's own test runner (`streamlit.testing.v1.AppTest`) in the release directory: an
exception at import or in the script's first run fails the deploy with the app's own error.
Serving is proven afterwards by the staging instances (a real server on the new release).
"""

from __future__ import annotations

import shlex

from ..errors import StepFailed
from ..inventory import App
from ..layout import Layout
from ..remote import Remote
from .boot_check import parse_probe
from .streamlit import settings

q = shlex.quote
GRACE = 10

PROBE = """\
import json, os, sys, time
script, run_it, limit = sys.argv[1], sys.argv[2] == "1", float(sys.argv[3])
started = time.monotonic()
try:
    with open(script, "rb") as fh:
        compile(fh.read(), script, "exec")
except (OSError, SyntaxError, ValueError) as exc:
    print("BOOT_ERROR " + json.dumps({"phase": "compile", "error": f"{type(exc).__name__}: {exc}", "trace": []}))
    sys.exit(0)
if run_it:
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(os.path.abspath(script), default_timeout=limit).run()
    if at.exception:
        e = at.exception[0]
        print("BOOT_ERROR " + json.dumps({"phase": "run", "error": e.message, "trace": list(e.stack_trace)[-4:]}))
        sys.exit(0)
print("BOOT_RESULT " + json.dumps({"seconds": time.monotonic() - started, "ran": run_it}))
"""


def boot_check_script(app: App, layout: Layout, release_id: str) -> str:
    s = settings(app)
    rel = layout.release(release_id)
    limit = s.restart_timeout
    return (f"cd {q(rel)} && exec timeout -k 2 {limit + GRACE:g} {q(rel + '/.venv/bin/python')} -c {q(PROBE)} "
            f"{q(s.script)} {'1' if s.boot_check else '0'} {limit:g}")


def boot_check(remote: Remote, app: App, layout: Layout, release_id: str) -> str:
    """Compile (and run once) the release's script; a short detail, or StepFailed with the app's error."""
    s = settings(app)
    if remote.dry_run:
        remote.printer.line(f"would check: {release_id} compiles and runs {s.script}", remote.host, level=0)
        return "dry-run"
    res = remote.run(boot_check_script(app, layout, release_id), warn=True, timeout=s.restart_timeout + GRACE + 15)
    found = parse_probe(res.stdout)
    where = f"{remote.host}: release {release_id}"
    if found is None:
        tail = "\n".join((res.stderr.strip() or res.stdout.strip()).splitlines()[-8:])
        raise StepFailed(f"{where} failed its boot check (exit {res.exited}):\n{tail}")
    kind, info = found
    if kind == "BOOT_ERROR":
        trace = "".join(f"\n    {line}" for line in info["trace"])
        what = "does not compile" if info["phase"] == "compile" else "raises when its script runs"
        raise StepFailed(f"{where} {what} ({s.script}): {info['error']}{trace}")
    return f"{s.script} {'compiles and runs' if info['ran'] else 'compiles'} in {info['seconds']:.2f} s"
