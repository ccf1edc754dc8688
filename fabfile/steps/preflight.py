"""preflight: the checks a person runs by eye before deploying, run every time.

The host's facts (disk, memory, binaries, python version, `nginx -t`, which required .env
keys are set, lock, current release, whether the app's port is free before a first deploy)
are gathered in the same round trip that takes the deploy lock (or, for `fab check`, in
one read-only round trip); pure functions turn them into checks. `.env` values never leave the host: only key names
and whether each is empty come back.
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import time

from ..context import Check, HostState
from ..errors import ShipfabError
from ..inventory import App, Target
from ..layout import Layout
from ..remote import Remote
from . import compose_preflight, db_checks
from .lock import describe_holder

q = shlex.quote

# Prints "port HOST PORT free|used": can a listener bind there next to ours? (SO_REUSEPORT:
# a gunicorn of ours started with --reuse-port does not count as taken.)
PORT_PROBE = (
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
    "try:\n"
    "    s.bind((sys.argv[1], int(sys.argv[2]))); print('port', sys.argv[1], sys.argv[2], 'free')\n"
    "except OSError as e:\n"
    "    print('port', sys.argv[1], sys.argv[2], 'used', e.strerror)\n"
)


def required_binaries(app: App) -> list[str]:
    """What the stack needs on the host."""
    bins = ["tar", "pgrep", app.python]
    if app.repo:
        bins.append("git")
    if app.health.via == "host" or app.streamlit:
        bins.append("curl")
    settings = app.worker or app.streamlit or app.gunicorn  # whose processes run under the manager
    bins.append({"supervisor": "supervisorctl", "systemd": "systemctl"}.get(settings.manager, "kill"))
    if app.worker is not None and app.worker.cron and not app.worker.crontab:
        bins.append("crontab")
    if app.preflight.nginx:
        bins.append("nginx")
    db = app.database
    if db is not None and db.engine == "postgresql":
        bins += [f"{db.pg_bin.rstrip('/')}/{tool}" if db.pg_bin else tool for tool in ("pg_dump", "pg_restore", "psql")]
    return bins + list(app.preflight.binaries)


# awk program printing "envkey NAME set|empty" for each KEY=VALUE line of a .env file.
ENV_KEYS_AWK = (
    r"/^[[:space:]]*(export[[:space:]]+)?[A-Za-z_][A-Za-z0-9_]*[[:space:]]*=/ {"
    r' k=$0; sub(/=.*/, "", k); sub(/^[[:space:]]*(export[[:space:]]+)?/, "", k); gsub(/[[:space:]]/, "", k);'
    r' v=substr($0, index($0, "=") + 1); gsub(/^[[:space:]"'"'"']+|[[:space:]"'"'"']+$/, "", v);'
    r' print "envkey", k, (v == "" ? "empty" : "set") }'
)


# `X.Y.Z 'sys.version'`: the version to check, and the text pip_sync hashes (so it need not start python again)
PYVER = 'import sys; print("%d.%d.%d" % sys.version_info[:3], repr(sys.version))'


def facts_cmd(app: App, layout: Layout) -> str:
    """Print one `name value...` line per fact; read-only."""
    sudo = "sudo -n " if app.gunicorn.sudo else ""
    lines = [
        f"d={q(layout.root)}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done",
        "echo \"df $(df -Pk \"$d\" | awk 'NR==2 {print $2, $4}')\"",
        "echo \"mem $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)\"",
        f"for b in {' '.join(q(b) for b in required_binaries(app))}; do "
        "printf 'bin %s %s\\n' \"$b\" \"$(command -v \"$b\" || echo -)\"; done",
        # -I -S: no site import (half the cost of this fact), same answer
        f"echo \"pyver $({q(app.python)} -I -S -c {q(PYVER)} 2>/dev/null || echo -)\"",
        f"if [ -f {q(layout.shared + '/.env')} ]; then echo env present; "
        f"awk {q(ENV_KEYS_AWK)} {q(layout.shared + '/.env')}; else echo env missing; fi",
        f"if [ -d {q(layout.lock)} ]; then echo \"lock held $(tr -d '\\n' < {q(layout.lock + '/owner.json')} "
        "2>/dev/null)\"; else echo lock free; fi",
        f"echo \"current $(readlink {q(layout.current)} 2>/dev/null) "
        f"$(cat {q(layout.current + '/REVISION')} 2>/dev/null)\"",
    ]
    lines += compose_preflight.facts_lines(app)
    host, _, port = app.gunicorn.bind.rpartition(":")
    if app.stack == "gunicorn" and host and port.isdigit() and not app.gunicorn.bind.startswith("unix:"):
        lines.append(f"[ -L {q(layout.current)} ] || {q(app.python)} -c {q(PORT_PROBE)} {q(host.strip('[]'))} {q(port)}")
    if app.preflight.nginx:
        conf = f" -c {q(app.preflight.nginx_conf)}" if app.preflight.nginx_conf else ""
        lines.append(f"if out=$({sudo}nginx -t{conf} 2>&1); then echo nginx_t ok; "
                     "else echo \"nginx_t fail $(echo \"$out\" | tail -n 2 | tr '\\n' ' ')\"; fi")
    return "\n".join(lines)


def parse_facts(stdout: str) -> dict[str, list[str]]:
    facts: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, _, rest = line.partition(" ")
        if key in ("bin", "envkey", "port"):
            facts.setdefault(key, []).append(rest)
        elif key:
            facts[key] = [rest]
    return facts


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def evaluate(app: App, facts: dict[str, list[str]], commits_ahead: str = "") -> list[Check]:
    """Turn the host's facts into pass/fail checks with details (pure)."""
    pf = app.preflight
    checks: list[Check] = []
    total_kb, _, avail_kb = (facts.get("df", [""])[0] + "  ").partition(" ")
    try:
        total, avail = int(total_kb), int(avail_kb)
        pct = 100.0 * avail / total if total else 0.0
        ok = pct >= pf.min_disk_percent and avail // 1024 >= pf.min_disk_mb
        checks.append(Check("disk", ok, f"{avail / 1048576:.1f} GiB free ({pct:.0f} %); need {pf.min_disk_percent:g} % "
                                        f"and {pf.min_disk_mb} MiB"))
    except ValueError:
        checks.append(Check("disk", False, "could not read free disk space (df)"))
    try:
        mem_mb = int(facts.get("mem", [""])[0]) // 1024
        checks.append(Check("memory", mem_mb >= pf.min_memory_mb, f"{mem_mb} MiB available; need {pf.min_memory_mb} MiB"))
    except ValueError:
        checks.append(Check("memory", False, "could not read MemAvailable from /proc/meminfo"))
    missing = [line.split()[0] for line in facts.get("bin", []) if line.split()[-1] == "-"]
    found = [line.split()[0] for line in facts.get("bin", []) if line.split()[-1] != "-"]
    checks.append(Check("binaries", not missing, f"missing: {', '.join(missing)}" if missing else ", ".join(found)))
    pyver = facts.get("pyver", ["-"])[0].split(" ", 1)[0]
    if pyver == "-":
        checks.append(Check("python", False, f"{app.python} does not run"))
    else:
        ok = _version_tuple(pyver) >= _version_tuple(pf.python_min)
        checks.append(Check("python", ok, f"{app.python} {pyver}; need >= {pf.python_min}"))
    if "nginx_t" in facts:
        result = facts["nginx_t"][0]
        checks.append(Check("nginx -t", result == "ok", "configuration ok" if result == "ok" else result[5:].strip()))
    if pf.required_env:
        present = {k.split()[0]: k.split()[-1] for k in facts.get("envkey", [])}
        if facts.get("env", ["missing"])[0] == "missing":
            checks.append(Check("env keys", False, f"shared/.env is missing; required: {', '.join(pf.required_env)}"))
        else:
            absent = [k for k in pf.required_env if k not in present]
            empty = [k for k in pf.required_env if present.get(k) == "empty"]
            problems = ([f"missing: {', '.join(absent)}"] if absent else []) + ([f"empty: {', '.join(empty)}"] if empty else [])
            checks.append(Check("env keys", not problems, "; ".join(problems) or f"all set: {', '.join(pf.required_env)}"))
    for line in facts.get("port", []):
        host, port, verdict, *why = line.split()
        ok = verdict == "free"
        checks.append(Check("port", ok, f"{host}:{port} is free" if ok else
                            f"{host}:{port} is already in use by another program ({' '.join(why)}): stop it or "
                            "change gunicorn.bind"))
    checks += compose_preflight.checks(app, facts)
    lock = facts.get("lock", ["free"])[0]
    if lock.startswith("held"):
        checks.append(Check("lock", False, f"held by {describe_holder(lock[4:].strip())}"))
    else:
        checks.append(Check("lock", True, "free"))
    current = (facts.get("current", [""])[0] + " ").split(" ")
    release, revision = current[0].rsplit("/", 1)[-1], current[1]
    ahead = f"; target ref is {commits_ahead} commit(s) ahead" if commits_ahead else ""
    checks.append(Check("release", True, f"{release} at {revision[:12]}{ahead}" if release else "nothing deployed yet"))
    return checks


def python_version(out: str) -> str:
    """sys.version of the app's python, from the facts output ("" when it did not run)."""
    _, _, text = (parse_facts(out).get("pyver", ["-"])[0] + " ").partition(" ")
    try:
        version = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return ""
    return version if isinstance(version, str) else ""


def commits_ahead(app: App, current_revision: str, ref: str) -> str:
    """How many commits `ref` is ahead of the deployed revision (local checkout only; '' if unknown)."""
    if not app.checkout or not current_revision:
        return ""
    res = subprocess.run(["git", "-C", app.checkout, "rev-list", "--count", f"{current_revision}..{ref}"],
                         capture_output=True, text=True, check=False)
    return res.stdout.strip() if res.returncode == 0 else ""


def checks_from(remote: Remote, target: Target, out: str, ref: str | None, locked_by_us: bool,
                state: HostState | None = None, ahead: dict[tuple[str, str, str], str] | None = None) -> list[Check]:
    """The checks for facts already gathered (`out`), plus the database checks (given the
    host's `state` when it was read with the facts). `ahead`: commits_ahead's answers so far
    in this run (the hosts of a fleet mostly share one checkout and revision: one `git` for all)."""
    facts = parse_facts(out)
    if locked_by_us:
        facts["lock"] = ["free"]
    revision = (facts.get("current", [""])[0] + " ").split(" ")[1]
    how = "local sandbox (no ssh)" if target.local else "reachable"
    checks = [Check("ssh", True, how)]
    key = (target.app.checkout, revision, ref or target.app.branch)
    ahead = {} if ahead is None else ahead
    if key not in ahead:
        ahead[key] = commits_ahead(target.app, *key[1:])
    return checks + evaluate(target.app, facts, ahead[key]) + db_checks.run_checks(remote, target, state=state)


def run_checks(remote: Remote, target: Target, ref: str | None = None) -> list[Check]:
    """All pre-flight checks of one host in one read-only round trip; never changes anything."""
    app = target.app
    started = time.monotonic()
    try:
        out = remote.run(facts_cmd(app, Layout(app.deploy_to)), change=False, timeout=target.connect_timeout + 20).stdout
    except ShipfabError as exc:
        return [Check("ssh", False, f"unreachable: {exc}")]
    checks = checks_from(remote, target, out, ref, locked_by_us=False)
    return [Check("ssh", True, f"{checks[0].detail}, {1000 * (time.monotonic() - started):.0f} ms for the facts")] + checks[1:]


def checks_json(checks: list[Check]) -> list[dict[str, object]]:
    return [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]

