"""docker compose on the host: releases as images.

Each release directory is its own build context. Services with a `build:` are built on the
host and tagged `<project>-<service>:<release id>` through an override file shipfab writes
beside the compose file (`.shipfab-compose.json`, JSON being YAML); `image:` services run as
given. Every compose command names the release's files and a project, so bringing an older
release back is `up --no-build` of its own files: its images, no rebuild.

The port a project listens on reaches the compose file as `${SHIPFAB_PORT}` (`port_env`), set
on the command line from hosts.toml (an integer); the app's `.env` is read by compose itself
(interpolation, never a shell). Pure builders here; `Remote.run` runs them.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from ..errors import StepFailed
from ..inventory import App, ComposeSettings
from ..layout import Layout
from ..remote import Remote

q = shlex.quote
OVERRIDE = ".shipfab-compose.json"


@dataclass(frozen=True)
class Project:
    """One compose project of the app: its name and the port it is given."""

    name: str
    port: int
    color: str = ""  # "" in place


def projects(cs: ComposeSettings) -> dict[str, Project]:
    """in-place: one project (the app's); blue-green/canary: `<project>-blue` and `<project>-green`."""
    if cs.mode == "in-place":
        return {"": Project(cs.project, cs.ports["blue"])}
    return {c: Project(f"{cs.project}-{c}", cs.ports[c], c) for c in ("blue", "green")}


def image_name(project: str, service: str, release_id: str) -> str:
    """The tag of a built service's image (repositories are lowercase; the release id is the tag)."""
    return f"{project}-{service.lower()}:{release_id}"


def base(app: App, layout: Layout, release_id: str, project: Project) -> str:
    """`cd <release> && env PORT=.. SHIPFAB_RELEASE=.. docker compose -p P -f FILE [-f override]`."""
    cs = app.compose
    assert cs is not None
    rel = layout.release(release_id)
    override = f" -f {q(OVERRIDE)}"
    return (f"cd {q(rel)} && env {cs.port_env}={project.port} SHIPFAB_RELEASE={q(release_id)} "
            f"{cs.docker} compose -p {q(project.name)} -f {q(cs.file)}"
            f"$([ -f {q(OVERRIDE)} ] && printf %s {q(override)})")


def config_cmd(app: App, layout: Layout, release_id: str, project: Project) -> str:
    """The resolved compose file as JSON (and its validity: non-zero exit when it is not)."""
    return base(app, layout, release_id, project) + " config --format json"


def built_services(config: dict[str, Any]) -> list[str]:
    """Services of a resolved compose file that have a `build:` section."""
    return sorted(name for name, svc in (config.get("services") or {}).items() if svc.get("build"))


def override_text(cs: ComposeSettings, services: list[str], release_id: str) -> str:
    """The override tagging each built service's image with the release id."""
    return json.dumps({"services": {s: {"image": image_name(cs.project, s, release_id)} for s in services}}, indent=1)


def write_override_cmd(layout: Layout, release_id: str) -> str:
    """Write the override (stdin) into the release, atomically."""
    path = f"{layout.release(release_id)}/{OVERRIDE}"
    return f"cat > {q(path + '.tmp')} && mv -f {q(path + '.tmp')} {q(path)}"


def build_cmd(app: App, layout: Layout, release_id: str, project: Project) -> str:
    return base(app, layout, release_id, project) + " build"


def up_cmd(app: App, layout: Layout, release_id: str, project: Project, timeout: float) -> str:
    """Start (or recreate) the project from this release's files and images; wait for health."""
    return (base(app, layout, release_id, project)
            + f" up -d --wait --wait-timeout {int(timeout)} --no-build --remove-orphans")


def down_cmd(app: App, layout: Layout, release_id: str, project: Project) -> str:
    return base(app, layout, release_id, project) + " down --remove-orphans"


def down_project_cmd(app: App, project: Project) -> str:
    """Stop a project whatever release it runs (compose finds it by its name)."""
    cs = app.compose
    assert cs is not None
    return f"{cs.docker} compose -p {q(project.name)} down --remove-orphans"


def run_cmd(app: App, layout: Layout, release_id: str, project: Project, service: str, command: str,
            env_names: list[str]) -> str:
    """A one-off container of the release (`run --rm`): the variables named pass through from
    the caller's environment (values never on the command line)."""
    passes = "".join(f" -e {q(n)}" for n in env_names)
    return (base(app, layout, release_id, project)
            + f" run --rm --no-deps -T{passes} {q(service)} sh -c {q(command)}")


def ls_cmd(app: App) -> str:
    """Every compose project of the daemon, running or not, as JSON."""
    cs = app.compose
    assert cs is not None
    return f"{cs.docker} compose ls -a --format json"


def parse_ls(stdout: str, layout: Layout) -> dict[str, tuple[str, str]]:
    """project -> (status, release id it runs from ('' when not from one of our releases))."""
    try:
        rows = json.loads(stdout.strip() or "[]")
    except ValueError:
        return {}
    out: dict[str, tuple[str, str]] = {}
    prefix = layout.releases + "/"
    for row in rows or []:
        files = str(row.get("ConfigFiles", "")).split(",")
        release = ""
        for f in files:
            if f.startswith(prefix):
                release = f[len(prefix):].split("/", 1)[0]
                break
        out[str(row.get("Name", ""))] = (str(row.get("Status", "")), release)
    return out


def images_exist_cmd(app: App, images: list[str]) -> str:
    cs = app.compose
    assert cs is not None
    return f"{cs.docker} image inspect --format '{{{{.Id}}}}' {' '.join(q(i) for i in images)} >/dev/null"


def remove_images_cmd(app: App, release_ids: list[str]) -> str:
    """Remove the images built for these releases (an image still used by a container stays)."""
    cs = app.compose
    assert cs is not None
    if not release_ids:
        return ""
    d = cs.docker
    refs = " ".join(f"--filter reference={q(cs.project + '-*:' + r)}" for r in release_ids)
    return (f"for i in $({d} images -q {refs} 2>/dev/null | sort -u); do {d} rmi \"$i\" >/dev/null 2>&1 || true; done")


# ---------------------------------------------------------------- runners


def running(s: str) -> bool:
    return s.startswith("running")


def ls(remote: Remote, app: App, layout: Layout) -> dict[str, tuple[str, str]]:
    return parse_ls(remote.run(ls_cmd(app), change=False).stdout, layout)


def config(remote: Remote, app: App, layout: Layout, release_id: str, project: Project) -> dict[str, Any]:
    res = remote.run(config_cmd(app, layout, release_id, project), change=False, warn=True, show_output=False)
    if remote.dry_run:
        return {}
    if not res.ok:
        raise StepFailed(f"{remote.host}: `docker compose config` refused {app.compose.file if app.compose else ''} "
                         f"of release {release_id}: {(res.stderr or res.stdout).strip()[-400:]}")
    return json.loads(res.stdout)


def up(remote: Remote, app: App, layout: Layout, release_id: str, project: Project, timeout: float) -> None:
    res = remote.run(up_cmd(app, layout, release_id, project, timeout), warn=True)
    if not res.ok and not remote.dry_run:
        raise StepFailed(f"{remote.host}: `docker compose up` of {release_id} as {project.name} failed: "
                         f"{(res.stderr or res.stdout).strip()[-400:]}")
