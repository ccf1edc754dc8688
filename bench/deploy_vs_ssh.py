"""Benchmark: shipfab redeploy / rollback against the floor, one hand-written `ssh host bash` script.

Starts one real loopback host (sshd, supervisord-managed gunicorn, nginx) under a temp dir,
deploys the sample app with shipfab, then times, alternating in the same run:

* deploy:   `fab -H web1 deploy --ref vX` (CLI process), `fleet.deploy(...)` (in-process),
            and the floor: `git archive REF | ssh host 'bash -c SCRIPT'`;
* rollback: `fab -H web1 rollback`, `fleet.rollback(...)`, and the floor rollback script.

The floor is the same work as shipfab's, by hand, in ONE ssh session (the archive streamed on
its stdin): take the mkdir lock (owner.json) and read the state (`current`, the release
directories); extract the release into releases/.tmp-<id>, write REVISION, link shared .env and
logs/, rename it into place; link the venv `current` uses (requirements unchanged: reused); the
boot check (the release's venv python imports the app and calls GET /health in process, under
timeout(1)); switch `current` (ln -sfn + mv -T); HUP through supervisorctl and wait until every
worker runs from the new release; GET /health (curl on the host) until 200; append the log line;
prune to the newest 3 releases (never `current` nor the one before); release the lock. Rollback:
lock + read `current` and the log, the target is the `previous` of current's deploy entry; boot
check, switch, HUP + wait, health, two log lines (rolled_back / rollback_to), unlock. The floor's
log lines are shipfab's format, so both take turns on one host. It prints a bash $EPOCHREALTIME
mark after each step: the floor's per-step times sit beside shipfab's own.

Then one shipfab deploy and one rollback under 50 req/s through nginx, the remote commands of a
`fab -v` deploy and rollback, and the fixed costs that explain the difference.
Run from the repo root: `python bench/deploy_vs_ssh.py --runs 5`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fabfile import fleet  # noqa: E402
from fabfile.context import Options  # noqa: E402
from fabfile.inventory import Target, load_inventory  # noqa: E402
from fabfile.output import Printer, table  # noqa: E402
from fabfile.release import ID_FORMAT  # noqa: E402
from fabfile.remote import Remote  # noqa: E402
from tests.conftest import SAMPLE, Host, World, git  # noqa: E402
from tests.services import LoadGenerator  # noqa: E402

RESULTS = REPO / "bench" / "results"
TARGET_RATIO = {"deploy": 1.25, "rollback": 1.5}  # issue 7, item 9
LOAD_RATE = 50.0
STEP_LINE = re.compile(r"^\[web1\] (\w+)\s+ok (\d+\.\d+)s", re.M)


# ---------------------------------------------------------------- setup


def make_repo(path: Path) -> Path:
    """Git repo of the sample app: tags v1 and v2 differ only in VERSION (same requirements)."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for name in ("app.py", "requirements.txt"):
        shutil.copy(SAMPLE / name, path / name)
    for tag in ("v1", "v2"):
        (path / "VERSION").write_text(tag + "\n")
        (path / "HEALTHY").write_text("1\n")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", tag)
        git(path, "tag", tag)
    return path


def make_wheelhouse(path: Path) -> Path:
    """pip wheel of the sample's requirements, so venv builds on the host run offline."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(path),
                    "-r", str(SAMPLE / "requirements.txt")], check=True, capture_output=True)
    return path


# ---------------------------------------------------------------- the floor: one ssh session per operation

# The boot check by hand: the release's python imports the app and calls GET /health in process.
FLOOR_BOOT = """\
import sys
from wsgiref.util import setup_testing_defaults
sys.path.insert(0, ".")
from app import app
environ = {"PATH_INFO": "/health", "REQUEST_METHOD": "GET"}
setup_testing_defaults(environ)
status = []
body = b"".join(app(environ, lambda line, headers, exc=None: status.append(line)))
sys.exit(0 if status[0].startswith("200") else f"boot check: {status[0]} {body[:200]!r}")
"""

# Shared by both floor scripts: step marks, lock + state, boot check, switch, serve (HUP + wait + curl).
FLOOR_COMMON = r"""
set -eu
mark() { echo "MARK $1 $EPOCHREALTIME"; }
mark start
M="$D/.shipfab"
mkdir -p "$M" && mkdir "$M/lock"
trap 'rm -rf "$M/lock"' EXIT
printf '%s\n' "$OWNER" > "$M/lock/owner.json"
cur=$(readlink "$D/current"); cur=${cur##*/}
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
started=$(now)
boot() { (cd "$1" && timeout -k 2 40 .venv/bin/python -c "$BOOT"); }
switch() { ln -sfn "releases/$1" "$D/current.tmp-$1" && mv -T "$D/current.tmp-$1" "$D/current"; }
master_pid() { supervisorctl -c "$CONF" pid "$PROG"; }
hup() { supervisorctl -c "$CONF" signal HUP "$PROG" >/dev/null; }
reload() {  # $1 = release dir now behind `current`: HUP, then wait until every worker runs from it
  want=$(cd "$1" && pwd -P)
  master=$(master_pid)
  hup
  i=0
  while :; do
    n=0; bad=0
    for w in $(pgrep -P "$master"); do n=$((n+1)); [ "$(readlink /proc/$w/cwd)" = "$want" ] || bad=1; done
    [ $n -ge "$WORKERS" ] && [ $bad = 0 ] && break
    i=$((i+1)); [ $i -lt 300 ] || { echo "workers never ran $want" >&2; exit 1; }
    sleep 0.1
  done
}
healthy() {
  i=0
  until [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$URL")" = 200 ]; do
    i=$((i+1)); [ $i -lt 100 ] || { echo "never healthy: $URL" >&2; exit 1; }
    sleep 0.1
  done
}
"""

FLOOR_DEPLOY = r"""
id=$(date -u +%Y%m%dT%H%M%SZ)
newest=$(ls -1 "$D/releases" | tail -n 1)
[[ "$id" > "$newest" ]] || { echo "release id $id is not newer than $newest" >&2; exit 1; }
mark lock
R="$D/releases/$id"; T="$D/releases/.tmp-$id"
mkdir -p "$T" && tar -xzf - -C "$T"
printf '%s\n' "$REV" > "$T/REVISION"
ln -s "$D/shared/.env" "$T/.env" && ln -s "$D/shared/logs" "$T/logs"
mv -T "$T" "$R"
mark deploy_code
ln -s "$(readlink "$D/current/.venv")" "$R/.venv"
mark pip_sync
boot "$R"
mark boot_check
switch "$id"
mark switch_release
reload "$R"
mark restart_gunicorn
healthy
mark health_check
fmt='{"event":"deploy","finished":"%s","previous":"%s","ref":"%s","release":"%s",'
fmt+='"revision":"%s","started":"%s","status":"success","user":"floor"}\n'
printf "$fmt" "$(now)" "$cur" "$REF" "$id" "$REV" "$started" >> "$M/releases.jsonl"
ls -1 "$D/releases" | grep -v '^\.' | head -n -3 | while read -r old; do
  [ "$old" = "$cur" ] || rm -rf -- "$D/releases/$old"
done
rm -rf "$M/lock"; trap - EXIT
mark finish
"""

FLOOR_ROLLBACK = r"""
prev=$(grep -F "\"release\":\"$cur\"" "$M/releases.jsonl" | grep -F '"event":"deploy"' | tail -n 1 |
       sed -n 's/.*"previous":"\([^"]*\)".*/\1/p')
[ -n "$prev" ] && [ -d "$D/releases/$prev" ] || { echo "no release served before $cur" >&2; exit 1; }
mark lock
boot "$D/releases/$prev"
mark boot_check
switch "$prev"
mark switch_release
reload "$D/releases/$prev"
healthy
mark activate
at=$(now)
fmt='{"event":"rollback","release":"%s","rolled_back_at":"%s","rolled_back_by":"floor",'
fmt+='"rolled_back_to":"%s","status":"rolled_back"}\n{"current_since":"%s","event":"rollback_to",'
fmt+='"release":"%s","status":"success"}\n'
printf "$fmt" "$cur" "$at" "$prev" "$at" "$prev" >> "$M/releases.jsonl"
rm -rf "$M/lock"; trap - EXIT
mark finish
"""
MARK_LINE = re.compile(r"^MARK (\w+) (\d+\.\d+)$", re.M)


def floor_steps(stdout: str) -> dict[str, float]:
    """Seconds per step from the floor's marks (each step: from the previous mark to its own)."""
    marks = [(name, float(t)) for name, t in MARK_LINE.findall(stdout)]
    return {name: t - before for (_, before), (name, t) in itertools.pairwise(marks)}


@dataclass
class Floor:
    """Runs the floor scripts over one OpenSSH session each (no connection reuse, like shipfab)."""

    host: Host
    target: Target
    known_hosts: Path
    repo: Path
    # The key exchange paramiko negotiates; OpenSSH's default post-quantum kex costs ~70 ms more per login.
    kex: tuple[str, ...] = ("-o", "KexAlgorithms=curve25519-sha256")

    def argv(self, command: str) -> list[str]:
        """`ssh -i key -p PORT -o UserKnownHostsFile=... user@127.0.0.1 COMMAND` (host key checked)."""
        h = self.host
        return ["ssh", "-F", "/dev/null", "-i", h.sshd.key_filename, "-p", str(h.sshd.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", *self.kex, f"{h.sshd.user}@{h.sshd.hostname}",
                command]

    def script_argv(self, script: str, **extra: str) -> list[str]:
        """ssh running `bash -c` on the settings of hosts.toml + the common functions + `script`."""
        app = self.target.app
        owner = json.dumps({"user": "floor", "pid": os.getpid(), "since": datetime.now(UTC).isoformat()})
        env = {"D": app.deploy_to, "CONF": app.gunicorn.supervisor_conf, "PROG": app.gunicorn.program,
               "WORKERS": str(app.gunicorn.workers), "URL": app.health.url, "OWNER": owner, "BOOT": FLOOR_BOOT,
               **extra}
        prelude = "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
        return self.argv("bash -c " + shlex.quote(prelude + FLOOR_COMMON + script))

    def deploy(self, ref: str) -> str:
        """`git archive REF | ssh host 'bash -c SCRIPT'`: upload and every remote step in one session."""
        rev = git(self.repo, "rev-parse", f"{ref}^{{commit}}").strip()
        archive = subprocess.Popen(["git", "-C", str(self.repo), "archive", "--format=tar.gz", rev],
                                   stdout=subprocess.PIPE)
        assert archive.stdout is not None
        try:
            res = subprocess.run(self.script_argv(FLOOR_DEPLOY, REF=ref, REV=rev), stdin=archive.stdout,
                                 capture_output=True, text=True, timeout=120)
        finally:
            archive.stdout.close()
            archive.wait()
        return _check(res, "floor deploy")

    def rollback(self) -> str:
        res = subprocess.run(self.script_argv(FLOOR_ROLLBACK), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=120)
        return _check(res, "floor rollback")


def _check(res: subprocess.CompletedProcess[str], what: str) -> str:
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


# ---------------------------------------------------------------- the bench


@dataclass
class Bench:
    """One world plus the timed operations and everything measured so far."""

    world: World
    host: Host
    floor: Floor
    samples: dict[str, list[float]] = field(default_factory=dict)
    steps: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def targets(self) -> list[Target]:
        return load_inventory(self.world.inventory).resolve("web1")

    # --- state helpers (untimed)

    def version(self, release: str = "current") -> str:
        """VERSION of `current` or of a release id (the host is this machine: read it directly)."""
        path = self.host.deploy_to / ("current" if release == "current" else f"releases/{release}") / "VERSION"
        return path.read_text().strip()

    def next_ref(self, than: str = "current") -> str:
        """The tag that differs from `than` (default: what serves now), so every deploy is a real change."""
        return "v2" if self.version(than) == "v1" else "v1"

    def settle(self) -> None:
        """Untimed: let old workers go, and reach a UTC second newer than every release id."""
        time.sleep(0.3)
        newest = max(self.host.releases(), default="")
        while datetime.now(UTC).strftime(ID_FORMAT) <= newest:
            time.sleep(0.05)

    def expect_serving(self, version: str) -> None:
        got = self.host.health()["version"]
        if got != version:
            raise RuntimeError(f"expected {version} to serve after the operation, got {got}")

    # --- operations: each returns nothing and raises on failure

    def fab(self, *args: str) -> str:
        res = self.world.fab("-H", "web1", *args)
        _check(res, "fab " + " ".join(args))
        return res.stdout

    def in_process(self, fn: Callable[[list[Target], Printer, Options], int], **kw: Any) -> str:
        """Call fleet.deploy / fleet.rollback in this process (new ssh connection, as the CLI); returns its output."""
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = fn(self.targets, Printer(verbosity=1), Options(**kw))
        if code:
            raise RuntimeError(f"{fn.__name__} exited {code}:\n{out.getvalue()}")
        return out.getvalue()

    def record(self, name: str, op: Callable[[], object]) -> object:
        self.settle()
        started = time.perf_counter()
        result = op()
        self.samples.setdefault(name, []).append(time.perf_counter() - started)
        if isinstance(result, str):  # per-step timings: shipfab's progress lines, the floor's marks
            per_step = self.steps.setdefault(name, {})
            found = floor_steps(result).items() if "floor" in name else STEP_LINE.findall(result)
            for step, secs in found:
                per_step.setdefault(step, []).append(float(secs))
        return result

    def deploy_round(self, i: int) -> None:
        variants: list[tuple[str, Callable[[str], object]]] = [
            ("deploy shipfab CLI", lambda ref: self.fab("deploy", "--ref", ref)),
            ("deploy shipfab in-process", lambda ref: self.in_process(fleet.deploy, ref=ref)),
            ("deploy floor (1 ssh)", self.floor.deploy),
        ]
        for name, op in _rotate(variants, i):
            ref = self.next_ref()
            self.record(name, lambda op=op, ref=ref: op(ref))
            self.expect_serving(ref)

    def rollback_round(self, i: int) -> None:
        variants: list[tuple[str, Callable[[], object]]] = [
            ("rollback shipfab CLI", lambda: self.fab("rollback")),
            ("rollback shipfab in-process", lambda: self.in_process(fleet.rollback)),
            ("rollback floor (1 ssh)", self.floor.rollback),
        ]
        for name, op in _rotate(variants, i):
            # Untimed: a new release of the other version; a rollback goes back to what serves now.
            self.settle()
            previous = self.host.current()
            self.in_process(fleet.deploy, ref=self.next_ref())
            self.record(name, op)
            self.expect_serving(self.version(previous))

    def under_load(self, what: str, op: Callable[[], object]) -> dict[str, Any]:
        """Run `op` while LoadGenerator sends 50 req/s to nginx /health."""
        assert self.host.nginx is not None
        self.settle()
        load = LoadGenerator(self.host.nginx.url + "/health", rate=LOAD_RATE).start()
        try:
            time.sleep(0.5)
            op()
            time.sleep(0.5)
        finally:
            result = load.stop()
        return {"operation": what, "total": result.total, "failed": result.failed, "failures": result.failures}

    def round_trips(self) -> dict[str, dict[str, Any]]:
        """Count remote commands and uploads from `fab -v` (`[host] $ cmd` / `[host] upload`)."""
        counts = {}
        for what, args in (("deploy", ("deploy", "--ref", self.next_ref(), "--verbose")),
                           ("rollback", ("rollback", "--verbose"))):
            self.settle()
            out = self.fab(*args)
            commands = re.findall(r"^\[web1\] \$ (.*)$", out, re.M)
            counts[what] = {"commands": len(commands), "uploads": len(re.findall(r"^\[web1\] upload ", out, re.M)),
                            "first_lines": [c[:100] for c in commands]}
        return counts

    def overheads(self, runs: int) -> dict[str, list[float]]:
        """Fixed costs that explain the gap: start-up, ssh logins, one command, supervisorctl."""
        target = self.targets[0]
        conf = shlex.quote(target.app.gunicorn.supervisor_conf)
        remote = Remote(target, Printer(verbosity=0))
        remote.run("true")
        burst = 10  # back-to-back, like a deploy's steps (the case TCP_NODELAY in Remote._open is for)
        ops: dict[str, tuple[Callable[[], object], int]] = {
            "fab process start-up (fab --list)": (lambda: _check(self.world.fab("--list"), "fab --list"), 1),
            "python -c pass (interpreter start-up and exit)": (lambda: _python("pass"), 1),
            "python -c 'import fabric' (the floor of any fab)": (lambda: _python("import fabric"), 1),
            "python -c 'import fabfile' (fabric + shipfab)": (lambda: _python("import fabfile"), 1),
            "python -c 'import fabfile', no bytecode cache": (lambda: _python("import fabfile", cache=False), 1),
            "paramiko connect + `true`": (lambda: _paramiko_true(target), 1),
            "OpenSSH connect + `true` (floor's options)": (lambda: _ssh_true(self.floor), 1),
            "OpenSSH connect + `true` (default kex)": (lambda: _ssh_true(replace(self.floor, kex=())), 1),
            "one command, back-to-back (shipfab Remote)": (lambda: [remote.run("true") for _ in range(burst)], burst),
            "`supervisorctl pid app` on the host": (lambda: remote.run(f"supervisorctl -c {conf} pid app"), 1),
        }
        out: dict[str, list[float]] = {}
        try:
            for _ in range(runs):
                for name, (op, count) in ops.items():
                    started = time.perf_counter()
                    op()
                    out.setdefault(name, []).append((time.perf_counter() - started) / count)
        finally:
            remote.close()
        return out


def fab_entry() -> list[str]:
    """`./fab`, the command a user runs (its first run makes .venv in the checkout: untimed, here)."""
    _check(subprocess.run([str(REPO / "fab"), "--version"], capture_output=True, text=True), "./fab --version")
    return [str(REPO / "fab")]


def _python(code: str, cache: bool = True) -> None:
    """`code` in the python ./fab runs (the checkout's .venv)."""
    env = dict(os.environ)
    if not cache:  # as this machine's environment sets it: site-packages keep their caches, fabfile/ has none
        env.pop("PYTHONPYCACHEPREFIX", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    _check(subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=REPO,
                          env=env), code)


def _ssh_true(floor: Floor) -> None:
    _check(subprocess.run(floor.argv("true"), capture_output=True, text=True, stdin=subprocess.DEVNULL), "ssh true")


def _paramiko_true(target: Target) -> None:
    remote = Remote(target, Printer(verbosity=0))
    try:
        remote.run("true")
    finally:
        remote.close()


def _rotate(items: list[Any], i: int) -> list[Any]:
    """Alternate which variant goes first, so no variant always runs on a 'warm' or 'cold' host."""
    k = i % len(items)
    return items[k:] + items[:k]


# ---------------------------------------------------------------- report


def stats(xs: list[float]) -> dict[str, float]:
    return {"runs": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(bench: Bench, load: list[dict[str, Any]], trips: dict[str, dict[str, Any]],
           overheads: dict[str, list[float]], runs: int) -> dict[str, Any]:
    """Print the tables and return the same data for latest.json."""
    ops = {name: stats(xs) for name, xs in bench.samples.items()}
    rows, ratios = [], {}
    for kind in ("deploy", "rollback"):
        floor = ops[f"{kind} floor (1 ssh)"]["median"]
        for how in ("shipfab CLI", "shipfab in-process", "floor (1 ssh)"):
            name, ratio_txt = f"{kind} {how}", "1.00x (floor)"
            s = ops[name]
            if how != "floor (1 ssh)":
                ratio = ratios[name] = s["median"] / floor
                verdict = "ok" if ratio <= TARGET_RATIO[kind] else "MISSED"
                ratio_txt = f"{ratio:.2f}x  target <= {TARGET_RATIO[kind]:.2f}x: {verdict}"
            rows.append([name, s["runs"], f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}", ratio_txt])
    print()
    print(table(["operation", "runs", "median (s)", "min", "max", "median / floor"], rows))
    print()
    for item in load:
        verdict = "ok" if item["failed"] == 0 and item["total"] > 0 else "MISSED"
        print(f"failed requests during {item['operation']}: {item['failed']} of {item['total']} "
              f"at {LOAD_RATE:.0f} req/s via nginx (target 0: {verdict})")
        for failure in item["failures"][:5]:
            print(f"    {failure}")
    startup = {k: ops[f"{k} shipfab CLI"]["median"] - ops[f"{k} shipfab in-process"]["median"]
               for k in ("deploy", "rollback")}
    print()
    print(f"CLI start-up share (CLI median - in-process median): deploy {startup['deploy']:.3f}s, "
          f"rollback {startup['rollback']:.3f}s")
    for kind, c in trips.items():
        print(f"shipfab {kind}: {c['commands']} remote commands + {c['uploads']} upload(s) on one ssh connection "
              f"(floor: 1 session)")
    step_stats = {name: {step: statistics.median(xs) for step, xs in per.items()} for name, per in bench.steps.items()}
    for kind in ("deploy", "rollback"):
        names = [n for n in ops if n.startswith(kind + " ")]
        steps: list[str] = []
        for n in names:
            steps += [s for s in step_stats.get(n, {}) if s not in steps]
        rows = [[step] + [_secs(step_stats.get(n, {}).get(step)) for n in names] for step in steps]
        rows.append(["outside steps"] + [_secs(ops[n]["median"] - sum(step_stats.get(n, {}).values())) for n in names])
        rows.append(["total (median)"] + [_secs(ops[n]["median"]) for n in names])
        print()
        print(table([f"{kind}: median per step (s)"] + [n.removeprefix(kind + " ") for n in names], rows))
    over = {name: stats(xs) for name, xs in overheads.items()}
    print()
    print(table(["overhead", "median (s)", "min", "max"],
                [[n, f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}"] for n, s in over.items()]))
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runs": runs,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "operations": ops,
        "samples": bench.samples,
        "ratios_vs_floor": ratios,
        "targets": {"deploy_ratio_max": TARGET_RATIO["deploy"], "rollback_ratio_max": TARGET_RATIO["rollback"],
                    "failed_requests": 0},
        "load": load,
        "cli_startup_share": startup,
        "round_trips": trips,
        "shipfab_steps_median": step_stats,
        "overheads": over,
    }


# ---------------------------------------------------------------- main


def run(runs: int, tmp: Path) -> dict[str, Any]:
    print(f"setting up under {tmp} ...", flush=True)
    world = World(tmp, make_wheelhouse(tmp / "wheels"), make_repo(tmp / "apprepo"), cli=fab_entry())
    try:
        host = world.add_host("web1", manager="supervisor", nginx=True)
        _check(world.fab("-H", "web1", "deploy", "--ref", "v1"), "first deploy")
        bench = Bench(world, host, Floor(host, load_inventory(world.inventory).targets["web1"],
                                         tmp / "known_hosts", world.repo))
        bench.expect_serving("v1")
        for i in range(runs):
            print(f"round {i + 1}/{runs}: deploys", flush=True)
            bench.deploy_round(i)
            print(f"round {i + 1}/{runs}: rollbacks", flush=True)
            bench.rollback_round(i)
        print("under load, round trips, overheads ...", flush=True)
        load = [bench.under_load("shipfab deploy (CLI)", lambda: bench.fab("deploy", "--ref", bench.next_ref())),
                bench.under_load("shipfab rollback (CLI)", lambda: bench.fab("rollback")),
                bench.under_load("floor deploy", lambda: bench.floor.deploy(bench.next_ref())),
                bench.under_load("floor rollback", bench.floor.rollback)]
        trips = bench.round_trips()
        overheads = bench.overheads(runs)
        return report(bench, load, trips, overheads, runs)
    finally:
        world.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per operation (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, releases) for inspection")
    args = parser.parse_args()
    # Ctrl-C (even if the parent ignored SIGINT) and SIGTERM unwind through the finally blocks that stop every service.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="shipfab-bench-"))
    # Every fab process (and `python -c`) below caches its bytecode, as any installed or checked-out
    # shipfab does after its first run; under PYTHONDONTWRITEBYTECODE=1 each fab start recompiles
    # fabfile/ (+40-60 ms, the "no bytecode cache" row). The cache lives in the temp dir.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    try:
        data = run(max(1, args.runs), tmp)
    except KeyboardInterrupt:
        print("interrupted: services stopped", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"bench failed (services stopped): {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
