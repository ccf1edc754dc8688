"""The compose strategy: a release is its directory (the build context) plus images tagged with
its id; it goes live in place, or on the standby color behind nginx (blue-green, canary).

Which color serves is read from the host, never remembered: the nginx upstream include shipfab
owns says which address has weight, and `docker compose ls` says which release each color's
project runs from (its compose file's path). `activate(run, id)` makes a release serve: in
place it is `up --no-build` of its images plus the probes; with colors it is a flip of the
upstream to the color that runs it (under a second), else `up` of its images on the standby
color, probes, then the flip. Every undo and the rollback go through it.
"""

from __future__ import annotations

import dataclasses
import time

from ..context import HostRun
from ..errors import StepFailed
from ..inventory import App, ComposeSettings
from ..managers import compose as dc
from ..probes import error_rate
from ..probes.http import wait_healthy
from ..steps import nginx_upstream

COLORS = ("blue", "green")
HOST = "127.0.0.1"  # colors run with host networking; nginx reaches them on loopback


def settings(run: HostRun) -> ComposeSettings:
    cs = run.app.compose
    if cs is None:
        raise StepFailed(f"{run.host}: app {run.app.name} has no compose settings")
    return cs


def addr(port: int) -> str:
    return f"{HOST}:{port}"


def other(color: str) -> str:
    return "green" if color == "blue" else "blue"


# ---------------------------------------------------------------- facts


def live_color(run: HostRun) -> str:
    """The color the nginx upstream sends the most weight to ("" when it names neither)."""
    nginx = run.app.nginx
    if nginx is None:
        return ""
    text = run.remote.run(f"cat {dc.q(nginx.upstream_file)} 2>/dev/null || true", change=False).stdout
    return color_in(text, settings(run))


def color_in(upstream_text: str, cs: ComposeSettings) -> str:
    """The color with the highest weight in an upstream block (pure)."""
    best, best_weight = "", 0
    for line in upstream_text.splitlines():
        parts = line.strip().rstrip(";").split()
        if len(parts) < 2 or parts[0] != "server" or "down" in parts:
            continue
        weight = next((int(p[7:]) for p in parts if p.startswith("weight=") and p[7:].isdigit()), 1)
        for color in COLORS:
            if parts[1] == addr(cs.ports[color]) and weight > best_weight:
                best, best_weight = color, weight
    return best


def color_running(run: HostRun, release_id: str) -> str:
    """The color whose project runs `release_id` ("" when none does)."""
    found = dc.ls(run.remote, run.app, run.layout)
    for color, project in dc.projects(settings(run)).items():
        status, rel = found.get(project.name, ("", ""))
        if color and dc.running(status) and rel == release_id:
            return color
    return ""


# ---------------------------------------------------------------- build


def project_for(run: HostRun, color: str = "") -> dc.Project:
    return dc.projects(settings(run))[color or ("" if settings(run).mode == "in-place" else "blue")]


def build_images(run: HostRun) -> str:
    """Step: validate the release's compose file, tag built services with the release id, build."""
    cs, release = settings(run), run.release
    project = project_for(run)
    config = dc.config(run.remote, run.app, run.layout, release.id, project)
    services = dc.built_services(config)
    run.on_undo("remove_images", lambda: _remove_images(run, release.id))
    run.remote.run(dc.write_override_cmd(run.layout, release.id), stdin=dc.override_text(cs, services, release.id))
    if services:
        run.remote.run(dc.build_cmd(run.app, run.layout, release.id, project))
    given = sorted(set(config.get("services", {})) - set(services))
    tags = ", ".join(dc.image_name(cs.project, s, release.id) for s in services) or "nothing to build"
    return f"built {tags}" + (f"; as given: {', '.join(given)}" if given else "")


def _remove_images(run: HostRun, release_id: str) -> str:
    run.remote.run(dc.remove_images_cmd(run.app, [release_id]))
    return f"removed the images of {release_id} (those no container uses)"


def boot_check(run: HostRun, release_id: str) -> str:
    """The release's images are all on the host (a rollback never rebuilds)."""
    cs = settings(run)
    config = dc.config(run.remote, run.app, run.layout, release_id, project_for(run))
    images = [dc.image_name(cs.project, s, release_id) for s in dc.built_services(config)]
    if images:
        res = run.remote.run(dc.images_exist_cmd(run.app, images), change=False, warn=True)
        if not res.ok and not run.remote.dry_run:
            raise StepFailed(f"{run.host}: the images of {release_id} are gone ({res.stderr.strip()[-200:]}): "
                             "deploy its ref again to rebuild them")
    return f"{len(images)} image(s) of {release_id} present"


def migrate_command(run: HostRun, command: str, env_names: list[str]) -> str:
    """The database plugin's migration, inside a one-off container of the new release."""
    cs = settings(run)
    project = dc.Project(f"{cs.project}-migrate", cs.ports["blue"])
    service = cs.service or next(iter(dc.config(run.remote, run.app, run.layout, run.release.id,
                                                project).get("services", {})), "")
    return dc.run_cmd(run.app, run.layout, run.release.id, project, service, command, env_names)


# ---------------------------------------------------------------- probes


def probe(run: HostRun, port: int, ready: bool, smoke: bool, timeout: float | None = None) -> str:
    """Every health URL (then /ready, then the smoke commands) against `port`, each retried until `timeout`
    (default: probe_timeout); raises on the first failure."""
    cs = settings(run)
    urls = [u.replace("{port}", str(port)) for u in cs.health]
    if ready and cs.ready:
        urls.append(cs.ready.replace("{port}", str(port)))
    for url in urls:
        target = dataclasses.replace(run.target, app=dataclasses.replace(
            run.app, health=dataclasses.replace(run.app.health, url=url)))
        try:
            wait_healthy(run.remote, target, timeout=cs.probe_timeout if timeout is None else timeout)
        except StepFailed as exc:
            raise StepFailed(f"{url}: {exc}") from None
    done = [f"{len(urls)} URL(s) ok"]
    if smoke and cs.smoke:
        for cmd in cs.smoke:
            res = run.remote.run(cmd.replace("{addr}", addr(port)), warn=True)
            if not res.ok and not run.remote.dry_run:
                raise StepFailed(f"{run.host}: smoke test failed (exit {res.exited}): {cmd}: "
                                 f"{(res.stderr or res.stdout).strip()[-300:]}")
        done.append(f"{len(cs.smoke)} smoke test(s) ok")
    return ", ".join(done)


def health(run: HostRun) -> str:
    """`fab health-check` / `inv health`: the project serving users (in place: the app's; else the color
    the nginx upstream sends requests to) is running `current`, and its health URLs answer as the deploy
    requires (`run.options.quick`: one probe each, no waiting)."""
    cs, current = settings(run), run.state.current
    if cs.mode == "in-place":
        project = project_for(run)
    else:
        color = live_color(run)
        if not color:
            raise StepFailed(f"{run.host}: the nginx upstream sends requests to neither blue nor green")
        project = dc.projects(cs)[color]
    status, release = dc.ls(run.remote, run.app, run.layout).get(project.name, ("", ""))
    if not dc.running(status):
        raise StepFailed(f"{run.host}: {project.name} is not running ({status or 'no such project'})")
    if release != current:
        raise StepFailed(f"{run.host}: {project.name} runs {release or 'no release of ours'}, not current ({current})")
    try:
        detail = probe(run, project.port, ready=False, smoke=False, timeout=0 if run.options.quick else None)
    except StepFailed as exc:
        raise StepFailed(f"{project.name} on {addr(project.port)}: {exc}") from None
    return f"{project.name} on {addr(project.port)} runs {current}: {detail}"


# ---------------------------------------------------------------- going live


def flip(run: HostRun, weights: dict[str, int]) -> None:
    """Publish the upstream with these color weights (0: `down`, no new request)."""
    nginx, cs = run.app.nginx, settings(run)
    if nginx is None:
        raise StepFailed(f"{run.host}: {cs.mode} needs [apps.{run.app.name}.nginx]")
    servers = [(addr(cs.ports[c]), weights.get(c, 0)) for c in COLORS]
    nginx_upstream.publish(run.remote, nginx, nginx_upstream.render(nginx.upstream, servers))


def activate(run: HostRun, release_id: str) -> str:
    """Make `release_id` serve (rollback and every undo use this)."""
    cs = settings(run)
    if cs.mode == "in-place":
        project = project_for(run)
        started = time.monotonic()
        dc.up(run.remote, run.app, run.layout, release_id, project, cs.probe_timeout)
        detail = probe(run, project.port, ready=True, smoke=False)
        return f"{project.name} runs {release_id} ({time.monotonic() - started:.1f} s), {detail}"
    color = color_running(run, release_id)
    how = "flip"
    if not color:
        color = other(live_color(run) or "green")
        project = dc.projects(cs)[color]
        dc.up(run.remote, run.app, run.layout, release_id, project, cs.probe_timeout)
        probe(run, project.port, ready=True, smoke=False)
        how = f"up of its images on {color}, then flip"
    started = time.monotonic()
    flip(run, {color: 100})
    return f"{color} ({release_id}) takes all requests: {how} in {time.monotonic() - started:.2f} s"


def start_standby(run: HostRun) -> str:
    """Step: the new release on the standby color, probed directly (health, ready, smoke)."""
    cs = settings(run)
    if cs.mode == "in-place":
        return "in place: no standby"
    standby = other(live_color(run) or "green")
    project = dc.projects(cs)[standby]
    release_id = run.release.id
    status, before = dc.ls(run.remote, run.app, run.layout).get(project.name, ("", ""))
    before = before if dc.running(status) else ""
    run.on_undo("restore_standby", lambda: _restore_standby(run, project, release_id, before))
    where = f"{standby} on {addr(project.port)}"
    try:
        dc.up(run.remote, run.app, run.layout, release_id, project, cs.probe_timeout)
        return f"{where}: " + probe(run, project.port, ready=True, smoke=True)
    except StepFailed as exc:
        raise StepFailed(f"the new release on the standby {where} (no traffic yet): {exc}") from None


def _restore_standby(run: HostRun, project: dc.Project, release_id: str, before: str) -> str:
    """Undo of start_standby: the standby color runs what it ran before (an older release's
    images: a later rollback to it stays a flip), or stops when it ran nothing."""
    _, rel = dc.ls(run.remote, run.app, run.layout).get(project.name, ("", ""))
    if rel != release_id:
        return f"{project.name} does not run {release_id}: left alone"
    exists = before and run.remote.run(f"test -d {dc.q(run.layout.release(before))} && echo yes || true",
                                       change=False).stdout.strip() == "yes"
    if exists:
        dc.up(run.remote, run.app, run.layout, before, project, settings(run).probe_timeout)
        return f"{project.name} runs {before} again"
    run.remote.run(dc.down_cmd(run.app, run.layout, release_id, project))
    return f"stopped {project.name}"


def go_live(run: HostRun) -> str:
    """Step: in place `up`; blue-green the flip; canary the weighted steps, each gated."""
    cs = settings(run)
    if cs.mode == "in-place":
        return activate(run, run.release.id)
    color = color_running(run, run.release.id)
    if not color and not run.remote.dry_run:
        raise StepFailed(f"{run.host}: no color runs {run.release.id}")
    color = color or "blue"
    new = addr(cs.ports[color])
    log = run.app.nginx.access_log if run.app.nginx else ""
    if cs.mode == "canary" and not run.state.current:
        flip(run, {color: 100})
        return f"{color} takes all requests (first release: no older one to weigh it against)"
    if cs.mode == "blue-green":
        run.flipped_at = (error_rate.log_size(run.remote, log) if log else 0, new)
        started = time.monotonic()
        flip(run, {color: 100})
        return f"{color} takes all requests (flip {time.monotonic() - started:.2f} s)"
    return canary(run, color, new, log)


def canary(run: HostRun, color: str, new: str, log: str) -> str:
    cs = settings(run)
    if not log:
        raise StepFailed(f"{run.host}: canary gates read nginx's access log: set [apps.{run.app.name}.nginx] access_log")
    passed = []
    for step in cs.steps:
        offset = error_rate.log_size(run.remote, log)
        flip(run, {color: step, other(color): 100 - step})
        run.printer.line(f"canary: {step} % of requests to {color}, gate in {cs.interval:g} s", run.host)
        time.sleep(cs.interval)
        counts = error_rate.counts_since(run.remote, log, offset, new)
        problems = gate_problems(cs, counts)
        if problems and not run.remote.dry_run:
            raise StepFailed(f"canary stopped at {step} %: {counts.describe()} ({'; '.join(problems)}); "
                             f"{color} gets weight 0 again")
        passed.append(f"{step} %: {counts.total} req, {100 * counts.error_rate:.1f} % 5xx")
        run.printer.line(f"canary: {step} % passed: {counts.describe()}", run.host)
    return f"{color} takes all requests; gates passed: " + ", ".join(passed)


def gate_problems(cs: ComposeSettings, counts: error_rate.Counts) -> list[str]:
    """Why a canary step fails its gate ([] when it passes; pure)."""
    problems = []
    if counts.total < cs.min_requests:
        problems.append(f"only {counts.total} requests reached it, need {cs.min_requests}")
    if counts.total and counts.error_rate > cs.max_error_rate:
        problems.append(f"5xx rate {100 * counts.error_rate:.1f} % > {100 * cs.max_error_rate:g} %")
    if counts.total and counts.success < cs.min_success:
        problems.append(f"success {100 * counts.success:.1f} % < {100 * cs.min_success:g} %")
    return problems


def watch(run: HostRun) -> str:
    """Step: blue-green's watch window over the access log (5xx rate of the new color); the
    old color stays up all through it, so the rollback on a breach is a flip."""
    cs = settings(run)
    if cs.mode == "in-place":
        return "in place: the probes decided"
    if cs.mode == "canary":
        return "the canary steps were the watch"
    offset, new = run.flipped_at
    if not run.state.current:
        return "first release: nothing to flip back to, no watch window"
    log = run.app.nginx.access_log if run.app.nginx else ""
    counts = error_rate.Counts()
    if log and new and not run.remote.dry_run:
        deadline = time.monotonic() + cs.watch_seconds
        while True:
            counts = error_rate.counts_since(run.remote, log, offset, new)
            if counts.total >= max(cs.min_requests, 1) and counts.error_rate > cs.max_error_rate:
                raise StepFailed(f"watch window: 5xx rate of {new} is {100 * counts.error_rate:.1f} % > "
                                 f"{100 * cs.max_error_rate:g} % ({counts.describe()}): flipping back")
            if time.monotonic() >= deadline:
                break
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    detail = f"{cs.watch_seconds:g} s: {counts.describe()}"
    if cs.stop_old:
        old = other(color_in_addr(cs, new))
        run.remote.run(dc.down_project_cmd(run.app, dc.projects(cs)[old]))
        detail += f"; stopped {old}"
    return detail


def color_in_addr(cs: ComposeSettings, address: str) -> str:
    return next((c for c in COLORS if addr(cs.ports[c]) == address), "blue")


def prune_images(app: App, release_ids: list[str]) -> str:
    """The stack's prune hook: images of pruned releases go with them."""
    return dc.remove_images_cmd(app, release_ids) if app.compose else ""
