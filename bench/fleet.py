"""Benchmark: a fleet redeploy / rollback with shipfab against the floor, N plain ssh sessions in parallel.

Starts N (default 20) real loopback sshd hosts, each with its own deploy root and its own
1-worker gunicorn (pidfile manager), and in front of each sshd a userspace TCP relay that
delays each direction by a one-way delay (default 10 ms: a 20 ms round trip; this kernel has
no netem). Every run of either side goes through the relays. Then, alternating, for each delay
(the given one, and 0 ms: straight to sshd):

* shipfab: the real CLI, `fab -H fleet deploy --ref vX --parallel N` (and `rollback`), one
  process; its per-step times from its `--json` summary (median over the hosts);
* the floor: N `git archive REF | ssh host 'bash -c SCRIPT'` started at once, one session per
  host, the single-host floor script of bench/deploy_vs_ssh.py (lock + state, code, venv link,
  boot check, switch, HUP + wait for the new worker, health, log, prune, unlock), with its
  reload for the pidfile manager.

Redeploy with unchanged requirements, and rollback; medians of --runs runs; the controller's
CPU seconds (user + system of the fab process, or of the N ssh + git clients).
Run from the repo root: `python bench/fleet.py --hosts 20 --runs 3`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from deploy_vs_ssh import FLOOR_BOOT, FLOOR_COMMON, Floor, fab_entry, floor_steps, make_repo, make_wheelhouse  # noqa: E402

from fabfile.inventory import load_inventory  # noqa: E402
from fabfile.output import table  # noqa: E402
from fabfile.release import ID_FORMAT  # noqa: E402
from tests.conftest import World  # noqa: E402
from tests.services import free_port  # noqa: E402

# The floor's reload for the pidfile manager: the master named by the pidfile gets the HUP
# (FLOOR_COMMON's reload then waits until every worker runs from the new release).
PIDFILE_RELOAD = r"""
master_pid() { cat "$D/shared/gunicorn.pid"; }
hup() { kill -HUP "$(master_pid)"; }
"""


# ---------------------------------------------------------------- the relay (a process of its own)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction, each chunk delivered `delay` seconds after it arrived, in order."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    sender = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    finally:
        queue.put_nowait((time.monotonic() + delay, b""))
        try:
            await sender
        except (ConnectionError, OSError):
            pass


async def _relay(pairs: list[tuple[int, int]], delay: float) -> None:
    async def handle(target: int, r1: asyncio.StreamReader, w1: asyncio.StreamWriter) -> None:
        r2, w2 = await asyncio.open_connection("127.0.0.1", target)
        for w in (w1, w2):
            sock = w.get_extra_info("socket")
            sock.setsockopt(6, 1, 1)  # TCP_NODELAY
        await asyncio.gather(_pump(r1, w2, delay), _pump(r2, w1, delay), return_exceptions=True)
        for w in (w1, w2):
            w.close()

    servers = [await asyncio.start_server(lambda r, w, t=target: handle(t, r, w), "127.0.0.1", listen)
               for listen, target in pairs]
    print("READY", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def relay_main(spec: str, delay_ms: float) -> None:
    pairs = [tuple(map(int, p.split(":"))) for p in spec.split(",")]
    asyncio.run(_relay(pairs, delay_ms / 1000))  # type: ignore[arg-type]


class Relays:
    """One process relaying every host's port (listen -> sshd) with the one-way delay."""

    def __init__(self, pairs: list[tuple[int, int]], delay_ms: float) -> None:
        spec = ",".join(f"{a}:{b}" for a, b in pairs)
        self.proc = subprocess.Popen([sys.executable, __file__, "--relay", spec, "--delay-ms", str(delay_ms)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "READY"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# ---------------------------------------------------------------- the fleet


@dataclass
class Fleet:
    world: World
    hosts: list[str]
    relay_ports: dict[str, int]
    samples: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    busy: dict[str, list[float]] = field(default_factory=dict)  # the machine's busy CPU seconds per run
    steps: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def route(self, via_relay: bool) -> None:
        """hosts.toml and known_hosts pointing at the relays (or straight at sshd)."""
        self.world.write()
        text = self.world.inventory.read_text().replace("workers = 2,", "workers = 1,")
        known = (self.world.tmp / "known_hosts").read_text()
        if via_relay:
            for name in self.hosts:
                sshd = self.world.hosts[name].sshd
                text = text.replace(f"port = {sshd.port}\n", f"port = {self.relay_ports[name]}\n")
                known = known.replace(f"]:{sshd.port} ", f"]:{self.relay_ports[name]} ")
        self.world.inventory.write_text(text)
        (self.world.tmp / "known_hosts").write_text(known)
        self.floors = [PidfileFloor(self.world.hosts[n], load_inventory(self.world.inventory).targets[n],
                                    self.world.tmp / "known_hosts", self.world.repo,
                                    port=self.relay_ports[n] if via_relay else 0) for n in self.hosts]

    def version(self) -> set[str]:
        return {(self.world.hosts[n].deploy_to / "current" / "VERSION").read_text().strip() for n in self.hosts}

    def next_ref(self) -> str:
        return "v2" if self.version() == {"v1"} else "v1"

    def settle(self) -> None:
        """Untimed: old workers go, and the clock reaches a second newer than every release id."""
        time.sleep(0.5)
        newest = max(r for n in self.hosts for r in self.world.hosts[n].releases())
        while datetime.now(UTC).strftime(ID_FORMAT) <= newest:
            time.sleep(0.05)

    def fab(self, *args: str) -> tuple[str, float, float]:
        """The real CLI; (stdout, wall seconds, CPU seconds of the fab process and its children)."""
        env = {**os.environ, "SHIPFAB_HOSTS": str(self.world.inventory)}
        started = time.perf_counter()
        proc = subprocess.Popen([*self.world.cli, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, stdin=subprocess.DEVNULL, cwd=self.world.tmp)
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        if proc.returncode:
            raise RuntimeError(f"fab {' '.join(args)} exited {proc.returncode}:\n{out[-4000:]}")
        return out, wall, usage.ru_utime + usage.ru_stime

    def shipfab(self, name: str, *args: str) -> None:
        report = self.world.tmp / "fleet.json"
        busy = machine_busy()
        _, wall, cpu = self.fab("-H", "fleet", *args, "--parallel", str(len(self.hosts)), "--quiet",
                                "--json", str(report))
        self._record(name, wall, cpu, machine_busy() - busy)
        per_step = self.steps.setdefault(name, {})
        hosts = json.loads(report.read_text())["hosts"]
        for step in hosts[0]["timings"]:
            per_step.setdefault(step, []).append(statistics.median(h["timings"].get(step, 0) for h in hosts))

    def floor(self, name: str, op: str, ref: str = "") -> None:
        before, busy = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy()
        started = time.perf_counter()
        outs = PidfileFloor.run_all(self.floors, op, ref)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._record(name, wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, machine_busy() - busy)
        per_step = self.steps.setdefault(name, {})
        found = [floor_steps(o) for o in outs]
        for step in found[0]:
            per_step.setdefault(step, []).append(statistics.median(f.get(step, 0) for f in found))

    def _record(self, name: str, wall: float, cpu: float, busy: float) -> None:
        self.samples.setdefault(name, []).append(wall)
        self.cpu.setdefault(name, []).append(cpu)
        self.busy.setdefault(name, []).append(busy)

    def round(self, label: str, i: int) -> None:
        ops = [("shipfab", self._shipfab_pair), ("floor", self._floor_pair)]
        for who, pair in (ops if i % 2 == 0 else ops[::-1]):
            pair(f"{label} {who}")

    def _shipfab_pair(self, prefix: str) -> None:
        self.settle()
        ref = self.next_ref()
        self.shipfab(f"deploy {prefix}", "deploy", "--ref", ref)
        assert self.version() == {ref}, self.version()
        self.settle()
        self.shipfab(f"rollback {prefix}", "rollback")
        assert self.version() == {"v2" if ref == "v1" else "v1"}

    def _floor_pair(self, prefix: str) -> None:
        self.settle()
        ref = self.next_ref()
        self.floor(f"deploy {prefix}", "deploy", ref)
        assert self.version() == {ref}, self.version()
        self.settle()
        self.floor(f"rollback {prefix}", "rollback")
        assert self.version() == {"v2" if ref == "v1" else "v1"}


@dataclass
class PidfileFloor(Floor):
    """The single-host floor of deploy_vs_ssh.py for a pidfile-managed gunicorn, through `port`."""

    port: int = 0

    def argv(self, command: str) -> list[str]:
        argv = super().argv(command)
        if self.port:
            argv[argv.index(str(self.host.sshd.port))] = str(self.port)
        return argv

    def script_argv(self, script: str, **extra: str) -> list[str]:
        app = self.target.app
        owner = json.dumps({"user": "floor", "pid": os.getpid(), "since": datetime.now(UTC).isoformat()})
        env = {"D": app.deploy_to, "WORKERS": str(app.gunicorn.workers), "URL": app.health.url, "OWNER": owner,
               "BOOT": FLOOR_BOOT, **extra}
        prelude = "".join(f"{k}={_q(v)}\n" for k, v in env.items())
        return self.argv("bash -c " + _q(prelude + FLOOR_COMMON + PIDFILE_RELOAD + script))

    @staticmethod
    def run_all(floors: list[PidfileFloor], op: str, ref: str) -> list[str]:
        """Every host's floor script at once (one ssh session each); their outputs."""
        import threading

        outs: list[str] = [""] * len(floors)
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                outs[i] = floors[i].deploy(ref) if op == "deploy" else floors[i].rollback()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(floors))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return outs


def machine_busy() -> float:
    """CPU seconds this machine spent on anything but idling so far (/proc/stat): controller and hosts."""
    with open("/proc/stat") as fh:
        ticks = [int(t) for t in fh.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _q(value: str) -> str:
    return shlex.quote(value)


# ---------------------------------------------------------------- setup and report


def setup(tmp: Path, n: int) -> Fleet:
    world = World(tmp, make_wheelhouse(tmp / "wheels"), make_repo(tmp / "apprepo"), cli=fab_entry())
    names = [f"web{i + 1:02d}" for i in range(n)]
    for name in names:
        world.add_host(name, manager="pidfile")
    world.groups["fleet"] = names
    fleet = Fleet(world, names, {name: free_port() for name in names})
    fleet.route(via_relay=False)
    # One venv build (web01), copied to the others: the same wheels, built once (setup, untimed).
    first = world.hosts[names[0]]
    fleet.fab("-H", names[0], "deploy", "--ref", "v1")
    venvs = first.deploy_to / "venvs"
    for name in names[1:]:
        dest = world.hosts[name].deploy_to / "venvs"
        shutil.copytree(venvs, dest, symlinks=True)  # `<hash>` links to its build dir by a relative name
    fleet.fab("-H", "fleet", "deploy", "--ref", "v1", "--parallel", str(n))
    return fleet


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(fleet: Fleet, labels: list[str], n: int, runs: int) -> str:
    rows = []
    for label in labels:
        for op in ("deploy", "rollback"):
            ship, floor = fleet.samples[f"{op} {label} shipfab"], fleet.samples[f"{op} {label} floor"]
            rows.append([f"{op}, {label}", f"{med(ship):.2f}", f"{med(floor):.2f}", f"{med(ship) / med(floor):.2f}x",
                         f"{med(fleet.cpu[f'{op} {label} shipfab']):.2f}", f"{med(fleet.cpu[f'{op} {label} floor']):.2f}",
                         f"{med(fleet.busy[f'{op} {label} shipfab']):.1f}", f"{med(fleet.busy[f'{op} {label} floor']):.1f}"])
    lines = [f"{n} hosts, medians of {runs} runs (wall seconds; controller CPU seconds; the machine's busy CPU "
             "seconds, controller and hosts)", "",
             table(["operation, one-way delay", "shipfab", "floor", "ratio", "shipfab CPU", "floor CPU",
                    "shipfab machine", "floor machine"], rows), ""]
    for label in labels:
        for op in ("deploy", "rollback"):
            for who in ("shipfab", "floor"):
                steps = fleet.steps.get(f"{op} {label} {who}", {})
                cells = ", ".join(f"{s} {med(v):.2f}" for s, v in steps.items())
                lines.append(f"per host, median step seconds, {op} {label} {who}: {cells}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay of the relays (default 10)")
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        relay_main(args.relay, args.delay_ms)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="shipfab-fleet-bench-"))
    os.environ["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    fleet = relays = None
    try:
        print(f"setting up {args.hosts} hosts under {tmp} ...", flush=True)
        fleet = setup(tmp, args.hosts)
        relays = Relays([(fleet.relay_ports[n], fleet.world.hosts[n].sshd.port) for n in fleet.hosts], args.delay_ms)
        labels = [f"{args.delay_ms:g} ms", "0 ms"]
        print("warm-up (untimed) ...", flush=True)
        fleet.route(via_relay=True)
        fleet.round("warm-up", 0)
        for i in range(args.runs):
            for label, via in ((labels[0], True), (labels[1], False)):
                print(f"run {i + 1}/{args.runs}, {label} ...", flush=True)
                fleet.route(via_relay=via)
                fleet.round(label, i)
        print(report(fleet, labels, args.hosts, args.runs))
    finally:
        if relays is not None:
            relays.stop()
        if fleet is not None:
            fleet.world.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
