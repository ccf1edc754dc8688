"""The watch window after a deploy (seeds/001's 10-minute CPU/memory watch): sample every
instance's process tree from /proc in one command per sample (`status_cmd`): RSS from
VmRSS, CPU from the utime+stime ticks over wall time. Memory is judged at every sample,
CPU as the average over the window (the guide's "average CPU > 50 %"); an instance whose
process is gone or was replaced fails at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import StepFailed
from ..inventory import StreamlitInstance, WatchSettings
from ..managers.streamlit import HostStatus


@dataclass
class Figures:
    """What the window saw, per instance port."""

    max_rss_mb: dict[int, float]
    cpu_percent: dict[int, float]
    samples: int

    def summary(self) -> str:
        if not self.max_rss_mb:
            return f"{self.samples} samples"
        top_mem = max(self.max_rss_mb, key=self.max_rss_mb.__getitem__)
        top_cpu = max(self.cpu_percent, key=self.cpu_percent.__getitem__) if self.cpu_percent else top_mem
        return (f"{self.samples} samples; peak {self.max_rss_mb[top_mem]:.0f} MiB (:{top_mem}), "
                f"avg cpu {self.cpu_percent.get(top_cpu, 0.0):.1f} % (:{top_cpu})")


def cpu_percent(first: HostStatus, last: HostStatus, port: int) -> float:
    """Average CPU of one instance's tree between two samples, in percent of one core."""
    wall = last.at - first.at
    if wall <= 0:
        return 0.0
    ticks = max(0, last.instances[port].ticks - first.instances[port].ticks)
    return 100.0 * ticks / last.clk / wall


def problem(instances: tuple[StreamlitInstance, ...], limits: WatchSettings, first: HostStatus, now: HostStatus,
            final: bool) -> str | None:
    """The first breach in this sample (None: within limits). `final`: the CPU average is judged too."""
    for inst in instances:
        name = f"instance {inst.port} ({inst.role})"
        was, cur = first.instances.get(inst.port), now.instances.get(inst.port)
        if cur is None or cur.pid is None:
            return f"{name} died during the watch window (no process on port {inst.port})"
        if was is not None and was.pid != cur.pid:
            return f"{name} was restarted during the watch window (pid {was.pid} -> {cur.pid})"
        rss_mb = cur.rss_kb / 1024
        if rss_mb > limits.max_memory_mb:
            return f"{name} uses {rss_mb:.0f} MiB of memory (RSS), limit {limits.max_memory_mb:g} MiB"
        if final:
            cpu = cpu_percent(first, now, inst.port)
            if cpu > limits.max_cpu_percent:
                return f"{name} used {cpu:.1f} % CPU on average, limit {limits.max_cpu_percent:g} %"
    return None


def watch(sample: Callable[[], HostStatus], instances: tuple[StreamlitInstance, ...], limits: WatchSettings,
          seconds: float | None = None, where: str = "") -> Figures:
    """Sample for `seconds` (default: the settings'); raise StepFailed naming the instance,
    the figure and the limit at the first breach."""
    window = limits.seconds if seconds is None else seconds
    first = sample()
    figures = Figures({}, {}, 1)
    end = time.monotonic() + window
    now = first
    while True:
        final = time.monotonic() >= end
        found = problem(instances, limits, first, now, final and now is not first)
        for inst in instances:
            cur = now.instances.get(inst.port)
            if cur is not None and cur.pid is not None:
                figures.max_rss_mb[inst.port] = max(figures.max_rss_mb.get(inst.port, 0.0), cur.rss_kb / 1024)
                if now is not first:
                    figures.cpu_percent[inst.port] = cpu_percent(first, now, inst.port)
        if found:
            raise StepFailed(f"{where}{found}")
        if final:
            return figures
        time.sleep(max(0.0, min(limits.interval, end - time.monotonic())))
        now = sample()
        figures.samples += 1
