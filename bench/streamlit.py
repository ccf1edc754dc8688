"""Benchmark: shipfab's staged, rolling streamlit deploy against the guide's way (seeds/001:
stop every instance, start them all again), on the same 3 instances (1 staging + 2 primaries,
supervisor programs on a loopback sshd host, behind nginx), each under a load loop of GET /
through nginx, counting failed requests and wall time.

* shipfab: `fab deploy --ref vX` (watch window off: `seconds = 0`, to time the restart itself);
* the guide: `supervisorctl stop` of every instance, `current` pointed at the other release,
  `supervisorctl start` of every instance, then wait until each answers /_stcore/health and
  GET / (the guide's fixed `sleep 5` / `sleep 15` left out: its best case).

Run from the repo root: `python bench/streamlit.py --runs 3`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.services import LoadGenerator  # noqa: E402
from tests.test_streamlit import Rig, make_repo, make_wheels, start_rig, stop_rig  # noqa: E402


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r1:
            ok = r1.read() == b"ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r2:
            return ok and r2.status == 200
    except OSError:
        return False


def guide_way(rig: Rig, release: str) -> None:
    """Stop all, switch, start all, wait until all serve."""
    assert rig.supervisord is not None
    rig.supervisord.ctl("stop", *(f"dash-{p}" for p in rig.ports))
    link = rig.deploy_to / "current"
    tmp = rig.deploy_to / "current.bench"
    tmp.unlink(missing_ok=True)
    os.symlink(f"releases/{release}", tmp)
    os.replace(tmp, link)
    rig.supervisord.ctl("start", *(f"dash-{p}" for p in rig.ports))
    deadline = time.monotonic() + 120
    while not all(_ready(p) for p in rig.ports):
        if time.monotonic() > deadline:
            raise RuntimeError("the instances did not come back")
        time.sleep(0.1)


def measure(fn, url: str) -> tuple[float, int, int]:
    with LoadGenerator(url, rate=20) as load:
        time.sleep(1)
        started = time.monotonic()
        fn()
        wall = time.monotonic() - started
        time.sleep(1)
        result = load.stop()
    return wall, result.failed, result.total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stbench-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "wheels").mkdir()
        (tmp / "repo").mkdir()
        (tmp / "rig").mkdir()
        rig = start_rig(tmp / "rig", make_wheels(tmp / "wheels"), make_repo(tmp / "repo"), watch_seconds=0)
        try:
            for ref in ("v1", "v2"):
                res = rig.fab("deploy", "--ref", ref)
                assert res.returncode == 0, res.stdout + res.stderr
            releases = sorted(p.name for p in (rig.deploy_to / "releases").iterdir())[-2:]
            url = rig.nginx.url + "/"
            rows: dict[str, list[tuple[float, int, int]]] = {"shipfab rolling": [], "guide: stop all, start all": []}
            for i in range(args.runs):
                ref = ("v1", "v2")[i % 2]

                def ship(ref: str = ref) -> None:
                    res = rig.fab("deploy", "--ref", ref)
                    assert res.returncode == 0, res.stdout + res.stderr

                rows["shipfab rolling"].append(measure(ship, url))
                target = releases[i % 2]
                rows["guide: stop all, start all"].append(measure(lambda t=target: guide_way(rig, t), url))
            print(f"{len(rig.ports)} instances (1 staging + {len(rig.primaries)} primaries), load 20 req/s through nginx, "
                  f"{args.runs} runs each")
            print("| way | wall time (median) | failed requests (total over runs) | requests |")
            print("|---|---|---|---|")
            for name, results in rows.items():
                print(f"| {name} | {statistics.median(r[0] for r in results):.1f} s | "
                      f"{sum(r[1] for r in results)} | {sum(r[2] for r in results)} |")
        finally:
            stop_rig(rig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
