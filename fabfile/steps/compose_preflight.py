"""Pre-flight facts of a compose app (gathered with the others, under the lock): the docker
daemon answers (its version), compose v2 is there, free disk under docker's data root, and
the nginx include shipfab flips is writable and `nginx -t` passes. Whether the release's
compose file is valid (`docker compose config`) is checked once the release exists, in the
build step."""

from __future__ import annotations

import os
import shlex

from ..context import Check
from ..inventory import App

q = shlex.quote


def facts_lines(app: App) -> list[str]:
    """Shell lines printing `docker_server V`, `compose_v V`, `docker_df KB`, `upstream_w yes|no`, `nginx_test ok|fail`."""
    cs = app.compose
    if cs is None:
        return []
    d = cs.docker
    lines = [
        f"echo \"docker_server $({d} version --format '{{{{.Server.Version}}}}' 2>/dev/null || echo -)\"",
        f"echo \"compose_v $({d} compose version --short 2>/dev/null || echo -)\"",
        f"r=$({d} info --format '{{{{.DockerRootDir}}}}' 2>/dev/null); "
        "echo \"docker_df $( [ -n \"$r\" ] && df -Pk \"$r\" 2>/dev/null | awk 'NR==2 {print $4}' || echo -)\"",
    ]
    if app.nginx is not None:
        f = app.nginx.upstream_file
        lines.append(f"if [ -w {q(f)} ] || {{ [ ! -e {q(f)} ] && [ -w {q(os.path.dirname(f) or '/')} ]; }}; "
                     "then echo upstream_w yes; else echo upstream_w no; fi")
        lines.append(f"if out=$({app.nginx.test} 2>&1); then echo nginx_test ok; "
                     "else echo \"nginx_test fail $(echo \"$out\" | tail -n 2 | tr '\\n' ' ')\"; fi")
    return lines


def _major(version: str) -> int:
    head = version.lstrip("v").split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def checks(app: App, facts: dict[str, list[str]]) -> list[Check]:
    """The compose checks from the facts (pure)."""
    cs = app.compose
    if cs is None:
        return []
    out: list[Check] = []
    server = facts.get("docker_server", ["-"])[0] or "-"
    out.append(Check("docker", server != "-", f"daemon {server}" if server != "-" else
                     f"`{cs.docker} version` got no answer from the daemon: is dockerd running, may this user use it?"))
    comp = facts.get("compose_v", ["-"])[0] or "-"
    out.append(Check("compose v2", _major(comp) >= 2, f"docker compose {comp}" if comp != "-" else
                     "`docker compose` is missing: install the compose v2 plugin (docker-compose-plugin)"))
    if cs.min_disk_gb:
        kb = facts.get("docker_df", ["-"])[0]
        if kb.isdigit():
            gb = int(kb) / 1048576
            out.append(Check("docker disk", gb >= cs.min_disk_gb, f"{gb:.1f} GiB free under docker's data root; "
                                                                 f"need {cs.min_disk_gb:g} GiB"))
        else:
            out.append(Check("docker disk", False, "could not read the free space under docker's data root"))
    if app.nginx is not None:
        ok = facts.get("upstream_w", ["no"])[0] == "yes"
        out.append(Check("nginx include", ok, f"{app.nginx.upstream_file} is writable" if ok else
                         f"{app.nginx.upstream_file} cannot be written by this user"))
        result = facts.get("nginx_test", ["fail"])[0]
        out.append(Check("nginx test", result == "ok", "`" + app.nginx.test + "` ok" if result == "ok"
                         else result[5:].strip() or "failed"))
    return out
