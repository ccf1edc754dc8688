"""`fab compose.switch --color blue` (flip the nginx upstream by hand) and `fab compose.canary`
(a deploy as a canary, with this run's steps and interval)."""

from __future__ import annotations

import dataclasses
import time

from fabric import task

from . import fleet
from .cli import on_each_host, options_for, run_cli, targets
from .context import HostRun
from .errors import UsageError
from .inventory import Target
from .managers import compose as dc
from .steps.switch_release import switch_release
from .strategies import compose


@task(help={"color": "blue or green: the color that takes every request"})
def switch(c, color, dry_run=False, verbose=False):
    """Flip the nginx upstream to a running color (probed first); `current` follows the release it runs."""
    if color not in compose.COLORS:
        raise UsageError(f"--color must be blue or green, not {color!r}")
    printer, options = options_for(dry_run, verbose, False)
    on_each_host(c, printer, options, "compose.switch", lambda run: _switch(run, color))


def _switch(run: HostRun, color: str) -> str:
    cs = compose.settings(run)
    if cs.mode == "in-place":
        raise UsageError(f"{run.host}: {run.app.name} runs in place: there are no colors to switch")
    project = dc.projects(cs)[color]
    status, release_id = dc.ls(run.remote, run.app, run.layout).get(project.name, ("", ""))
    if not dc.running(status) or not release_id:
        raise UsageError(f"{run.host}: {project.name} is not running a release ({status or 'no such project'}): "
                         "nothing to switch to")
    compose.probe(run, project.port, ready=True, smoke=False)
    started = time.monotonic()
    compose.flip(run, {color: 100})
    took = time.monotonic() - started
    if release_id != run.state.current:
        switch_release(run.remote, run.layout, release_id)
    return f"{color} ({release_id}) takes all requests (flip {took:.2f} s); current -> {release_id}"


@task(help={"ref": "git ref to deploy (default: the app's branch)", "steps": "weights, e.g. 5,25,50,100",
            "interval": "seconds at each step before its gate", "skip-checks": "skip the pre-flight checks (logged)"})
def canary(c, ref=None, steps=None, interval=None, dry_run=False, skip_checks=False, verbose=False, quiet=False):
    """Deploy as a canary: weights step through --steps, each step gated on the new color's error rate."""
    printer, options = options_for(dry_run, verbose, quiet, ref=ref, skip_checks=skip_checks)
    weights = _steps(steps) if steps else None

    def body() -> int:
        chosen = [_as_canary(t, weights, interval) for t in targets(c, printer)]
        return fleet.deploy(chosen, printer, options)

    run_cli(body)


def _steps(text: str) -> tuple[int, ...]:
    try:
        weights = tuple(int(p) for p in str(text).split(",") if p.strip())
    except ValueError:
        raise UsageError(f"--steps: expected percentages like 5,25,50,100, got {text!r}") from None
    if not weights or list(weights) != sorted(weights) or weights[-1] != 100 or weights[0] <= 0:
        raise UsageError(f"--steps must be increasing percentages ending at 100, got {text!r}")
    return weights


def _as_canary(target: Target, weights: tuple[int, ...] | None, interval: object) -> Target:
    cs = target.app.compose
    if cs is None or target.app.nginx is None:
        raise UsageError(f"{target.name}: compose.canary needs a compose app behind nginx ([apps.X.nginx])")
    try:
        secs = float(str(interval)) if interval is not None else cs.interval
    except ValueError:
        raise UsageError(f"--interval: expected seconds, got {interval!r}") from None
    new = dataclasses.replace(cs, mode="canary", steps=weights or cs.steps, interval=secs)
    return dataclasses.replace(target, app=dataclasses.replace(target.app, compose=new))

