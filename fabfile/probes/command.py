"""The command probe: the app's health command (`python -m engine.extraction.health`) run in a
release through the one launcher, plus the host's free disk (df). Pure parsing decides:
the status line must contain the expected word (HEALTHY; never UNHEALTHY), the command must
exit 0, and no alert threshold may be crossed (failure rate above the maximum, free disk
below the minimum)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from invoke.exceptions import CommandTimedOut

from ..errors import StepFailed
from ..inventory import App
from ..layout import Layout
from ..remote import Remote
from ..steps.launcher import launch_cmd, launch_stdin

q = shlex.quote
DF_MARK = "__SHIPFAB_DF__"
RC_MARK = "__SHIPFAB_RC__"
STATUS = re.compile(r"\bstatus\b", re.IGNORECASE)
FAILURE_RATE = re.compile(r"\bfailure[ _-]?rate\b\s*[:=]\s*([0-9]*\.?[0-9]+)\s*(%?)", re.IGNORECASE)


@dataclass(frozen=True)
class Health:
    status_line: str
    healthy: bool  # the status line says the expected word and the command exited 0
    failure_rate: float | None = None  # a fraction (2 % -> 0.02)
    disk_free_percent: float | None = None
    problems: tuple[str, ...] = field(default_factory=tuple)  # alerts crossed, why not healthy

    @property
    def ok(self) -> bool:
        return self.healthy and not self.problems

    def figures(self) -> str:
        parts = []
        if self.failure_rate is not None:
            parts.append(f"failure_rate {self.failure_rate:.2%}")
        if self.disk_free_percent is not None:
            parts.append(f"disk free {self.disk_free_percent:.1f} %")
        return ", ".join(parts)


def health_script(python: str, layout: Layout, release_dir: str, command: str) -> str:
    """The health command (through the launcher), its exit code, then df of the app's directory."""
    return "\n".join([
        f"{launch_cmd(python, release_dir, command)}; echo; echo {RC_MARK} $?",
        f"echo \"{DF_MARK} $(df -Pk {q(layout.root)} | awk 'NR==2 {{print $2, $4}}')\"",
    ])


def status_line(output: str) -> str:
    """The first line naming a status (`status: HEALTHY`, `Overall Status: DEGRADED`), else the first line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in lines if STATUS.search(line)), lines[0] if lines else "")


def failure_rate(output: str) -> float | None:
    """`failure_rate: 0.02` or `Failure rate: 2%` -> 0.02 (the last such line)."""
    found = FAILURE_RATE.findall(output)
    if not found:
        return None
    value, pct = found[-1]
    return float(value) / 100 if pct else float(value)


def disk_free_percent(df_line: str) -> float | None:
    """`<total kB> <available kB>` -> percent available."""
    try:
        total, avail = (int(x) for x in df_line.split()[:2])
    except ValueError:
        return None
    return 100.0 * avail / total if total else None


def split_output(stdout: str) -> tuple[str, int | None, str]:
    """(the command's output, its exit code, the df figures)."""
    body, rc, df = [], None, ""
    for line in stdout.splitlines():
        if line.startswith(RC_MARK):
            rc = int(line.split()[1]) if line.split()[1:] and line.split()[1].isdigit() else None
        elif line.startswith(DF_MARK):
            df = line[len(DF_MARK):].strip()
        else:
            body.append(line)
    return "\n".join(body).strip(), rc, df


def evaluate(output: str, rc: int | None, df: str, expect: str, max_failure_rate: float,
             min_disk_percent: float) -> Health:
    """Pure: the verdict on one run of the health command."""
    line = status_line(output)
    said = bool(re.search(rf"(?<![A-Za-z0-9_]){re.escape(expect)}(?![A-Za-z0-9_])", line))
    problems = []
    if not said:
        problems.append(f"status line does not say {expect}: {line or '(no output)'}")
    if rc != 0:
        problems.append(f"the health command exited {rc if rc is not None else '?'}")
    rate, disk = failure_rate(output), disk_free_percent(df)
    if rate is not None and rate > max_failure_rate:
        problems.append(f"failure rate {rate:.2%} > {max_failure_rate:.0%}")
    if disk is not None and disk < min_disk_percent:
        problems.append(f"disk free {disk:.1f} % < {min_disk_percent:g} %")
    return Health(line, said and rc == 0, rate, disk, tuple(problems))


def run_health(remote: Remote, app: App, env: dict[str, str], release_dir: str = "") -> Health:
    """Run the health command once in `release_dir` (default: current) and judge it."""
    w = app.worker
    if w is None or not w.health_command:
        raise StepFailed(f"{remote.host}: no worker.health.command configured for app {app.name}")
    layout = Layout(app.deploy_to)
    script = health_script(app.python, layout, release_dir or layout.current, w.health_command)
    try:
        res = remote.run(script, change=False, warn=True, show_output=False, stdin=launch_stdin(env),
                         timeout=w.health_timeout)
    except CommandTimedOut:
        return Health("", False, problems=(f"the health command did not answer in {w.health_timeout:g} s",))
    output, rc, df = split_output(remote.printer.redact(res.stdout))
    return evaluate(output, rc, df, w.health_expect, w.max_failure_rate, w.min_disk_percent)


def check_health(remote: Remote, app: App, env: dict[str, str], release_dir: str = "") -> str:
    """run_health, printing the status line and figures; StepFailed unless healthy within the thresholds."""
    h = run_health(remote, app, env, release_dir)
    remote.printer.line(f"health: {h.status_line or '(no status line)'}"
                        + (f" ({h.figures()})" if h.figures() else ""), remote.host, level=0)
    if not h.ok:
        raise StepFailed(f"{remote.host}: not healthy: {'; '.join(h.problems)}")
    return f"{h.status_line}" + (f"; {h.figures()}" if h.figures() else "")
