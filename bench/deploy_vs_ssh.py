"""Benchmark: shipfab redeploy / rollback against the floor, one hand-written `ssh host bash` script.

Starts one real loopback host (sshd, supervisord-managed gunicorn, nginx) under a temp dir,
deploys the sample app with shipfab, then times, alternating in the same run:

* deploy:   `fab -H web1 deploy --ref vX` (CLI process), `flow.deploy(...)` (in-process),
            and the floor: `git archive REF | ssh host 'bash -c SCRIPT'` doing the same steps;
* rollback: `fab -H web1 rollback`, `flow.rollback(...)`, and the floor rollback script.

Then one shipfab deploy and one rollback under 50 req/s through nginx, and a few overheads
that explain the difference. Run from the repo root: `python bench/deploy_vs_ssh.py --runs 5`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
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

from fabfile import flow  # noqa: E402
from fabfile.flow import Options  # noqa: E402
from fabfile.inventory import Target, load_inventory  # noqa: E402
from fabfile.output import Printer, table  # noqa: E402
from fabfile.release import ID_FORMAT  # noqa: E402
from fabfile.remote import Remote  # noqa: E402
from tests.conftest import SAMPLE, Host, World, git  # noqa: E402
from tests.services import LoadGenerator  # noqa: E402

RESULTS = REPO / "bench" / "results"
TARGET_RATIO = 2.0
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

# Shared by both floor scripts: lock, release-on-exit, and "make `current` serve" (HUP + wait + curl).
FLOOR_COMMON = r"""
set -eu
M="$D/.shipfab"
mkdir -p "$M" && mkdir "$M/lock"
trap 'rm -rf "$M/lock"' EXIT
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
started=$(now)
serve() {  # $1 = release dir now behind `current`: HUP, wait for its workers, then HTTP 200
  want=$(cd "$1" && pwd -P)
  master=$(supervisorctl -c "$CONF" pid "$PROG")
  supervisorctl -c "$CONF" signal HUP "$PROG" >/dev/null
  i=0
  while :; do
    n=0; bad=0
    for w in $(pgrep -P "$master"); do n=$((n+1)); [ "$(readlink /proc/$w/cwd)" = "$want" ] || bad=1; done
    [ $n -ge "$WORKERS" ] && [ $bad = 0 ] && break
    i=$((i+1)); [ $i -lt 300 ] || { echo "workers never ran $want" >&2; exit 1; }
    sleep 0.1
  done
  i=0
  until [ "$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$URL")" = 200 ]; do
    i=$((i+1)); [ $i -lt 100 ] || { echo "never healthy: $URL" >&2; exit 1; }
    sleep 0.1
  done
}
switch() { ln -sfn "releases/$1" "$D/current.tmp-$1" && mv -T "$D/current.tmp-$1" "$D/current"; }
"""

FLOOR_DEPLOY = r"""
id=$(date -u +%Y%m%dT%H%M%SZ)
newest=$(ls -1 "$D/releases" | tail -n 1)
[[ "$id" > "$newest" ]] || { echo "release id $id is not newer than $newest" >&2; exit 1; }
prev=$(readlink "$D/current"); prev=${prev##*/}
R="$D/releases/$id"
mkdir -p "$R" && tar -xzf - -C "$R"
printf '%s\n' "$REV" > "$R/REVISION"
ln -s "$D/shared/.env" "$R/.env" && ln -s "$D/shared/logs" "$R/logs"
ln -s "$(readlink "$D/current/.venv")" "$R/.venv"
switch "$id"
serve "$R"
fmt='{"event":"deploy","status":"success","user":"floor","release":"%s","ref":"%s","revision":"%s",'
fmt+='"previous":"%s","started":"%s","finished":"%s"}\n'
printf "$fmt" "$id" "$REF" "$REV" "$prev" "$started" "$(now)" >> "$M/releases.jsonl"
echo "$id"
"""

FLOOR_ROLLBACK = r"""
cur=$(readlink "$D/current"); cur=${cur##*/}
prev=$(ls -1 "$D/releases" | awk -v c="$cur" '$0 < c' | tail -n 1)
[ -n "$prev" ] || { echo "nothing older than $cur" >&2; exit 1; }
switch "$prev"
serve "$D/releases/$prev"
printf '{"release":"%s","rolled_back_at":"%s","rolled_back_by":"floor","rolled_back_to":"%s","status":"rolled_back"}\n' \
  "$cur" "$(now)" "$prev" >> "$M/releases.jsonl"
echo "$prev"
"""


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

    def script_argv(self, script: str) -> list[str]:
        """ssh running `bash -c` on the settings of hosts.toml + the common functions + `script`."""
        app = self.target.app
        env = {"D": app.deploy_to, "CONF": app.gunicorn.supervisor_conf, "PROG": app.gunicorn.program,
               "WORKERS": str(app.gunicorn.workers), "URL": app.health.url}
        prelude = "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items())
        return self.argv("bash -c " + shlex.quote(prelude + FLOOR_COMMON + script))

    def deploy(self, ref: str) -> None:
        """`git archive REF | ssh host 'bash -c SCRIPT'`: upload and every remote step in one session."""
        rev = git(self.repo, "rev-parse", f"{ref}^{{commit}}").strip()
        script = f"REF={shlex.quote(ref)}\nREV={rev}\n" + FLOOR_DEPLOY
        archive = subprocess.Popen(["git", "-C", str(self.repo), "archive", "--format=tar.gz", rev],
                                   stdout=subprocess.PIPE)
        assert archive.stdout is not None
        try:
            res = subprocess.run(self.script_argv(script), stdin=archive.stdout, capture_output=True, text=True, timeout=120)
        finally:
            archive.stdout.close()
            archive.wait()
        _check(res, "floor deploy")

    def rollback(self) -> None:
        res = subprocess.run(self.script_argv(FLOOR_ROLLBACK), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=120)
        _check(res, "floor rollback")


def _check(res: subprocess.CompletedProcess[str], what: str) -> None:
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}")


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
        """Call flow.deploy / flow.rollback in this process (new ssh connection, as the CLI); returns its output."""
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
        if isinstance(result, str):  # shipfab's output: keep its own per-step timings
            per_step = self.steps.setdefault(name, {})
            for step, secs in STEP_LINE.findall(result):
                per_step.setdefault(step, []).append(float(secs))
        return result

    def deploy_round(self, i: int) -> None:
        variants: list[tuple[str, Callable[[str], object]]] = [
            ("deploy shipfab CLI", lambda ref: self.fab("deploy", "--ref", ref)),
            ("deploy shipfab in-process", lambda ref: self.in_process(flow.deploy, ref=ref)),
            ("deploy floor (1 ssh)", self.floor.deploy),
        ]
        for name, op in _rotate(variants, i):
            ref = self.next_ref()
            self.record(name, lambda op=op, ref=ref: op(ref))
            self.expect_serving(ref)

    def rollback_round(self, i: int) -> None:
        variants: list[tuple[str, Callable[[], object]]] = [
            ("rollback shipfab CLI", lambda: self.fab("rollback")),
            ("rollback shipfab in-process", lambda: self.in_process(flow.rollback)),
            ("rollback floor (1 ssh)", self.floor.rollback),
        ]
        for name, op in _rotate(variants, i):
            # Untimed: a new release whose previous one (the newest now) runs the other version.
            self.settle()
            self.in_process(flow.deploy, ref=self.next_ref(than=self.host.releases()[-1]))
            previous = self.host.releases()[-2]
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
                verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
                ratio_txt = f"{ratio:.2f}x  target <= {TARGET_RATIO:.1f}x: {verdict}"
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
    for name, per in step_stats.items():
        total = ops[name]["median"]
        parts = ", ".join(f"{step} {secs:.3f}" for step, secs in per.items())
        print(f"{name}, median per step (s): {parts}; outside steps {total - sum(per.values()):.3f}")
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
        "targets": {"deploy_ratio_max": TARGET_RATIO, "rollback_ratio_max": TARGET_RATIO, "failed_requests": 0},
        "load": load,
        "cli_startup_share": startup,
        "round_trips": trips,
        "shipfab_steps_median": step_stats,
        "overheads": over,
    }


# ---------------------------------------------------------------- main


def run(runs: int, tmp: Path) -> dict[str, Any]:
    print(f"setting up under {tmp} ...", flush=True)
    world = World(tmp, make_wheelhouse(tmp / "wheels"), make_repo(tmp / "apprepo"))
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
