"""The compose stack against a real dockerd (compose v2), a real sshd and a real nginx whose
upstream include shipfab owns: in place, blue-green (under load), the watch window's
automatic flip back, canary gates; plus the pure parts (log parsing, gates, commands)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from fabfile.inventory import ComposeSettings, load_inventory
from fabfile.layout import Layout
from fabfile.managers import compose as dc
from fabfile.probes import error_rate
from fabfile.strategies.compose import color_in, gate_problems

from .conftest import inv_health
from .docker_rig import ComposeWorld, docker_rig, example_repo, make_world  # noqa: F401  (docker_rig: fixture)
from .services import DEFAULT_SESSION_ENV, LoadGenerator, http_backend

# ---------------------------------------------------------------- pure parts


def test_log_lines_count_each_attempt_for_its_own_server():
    lines = [
        '2026-11-24T05:00:00+00:00 200 127.0.0.1:8102 200 0.001 "GET / HTTP/1.1"',
        '2026-11-24T05:00:00+00:00 500 127.0.0.1:8102 500 0.001 "GET / HTTP/1.1"',
        '2026-11-24T05:00:01+00:00 200 127.0.0.1:8102, 127.0.0.1:8101 502, 200 0.003 "GET / HTTP/1.1"',
        '2026-11-24T05:00:01+00:00 404 127.0.0.1:8102 404 0.001 "GET /nope HTTP/1.1"',
        '2026-11-24T05:00:02+00:00 200 127.0.0.1:8101 200 0.001 "GET / HTTP/1.1"',
        "garbage",
    ]
    new = error_rate.count(lines, "127.0.0.1:8102")
    assert (new.total, new.errors, new.ok) == (4, 2, 1)
    old = error_rate.count(lines, "127.0.0.1:8101")
    assert (old.total, old.errors, old.ok) == (2, 0, 2)
    assert error_rate.attempts('t 502 127.0.0.1:1 - 0.0 "GET /"') == [("127.0.0.1:1", "-")]


def _settings(**kw) -> ComposeSettings:
    base = dict(file="compose.yaml", mode="canary", project="web", service="web", ports={"blue": 8101, "green": 8102},
                port_env="SHIPFAB_PORT", docker="docker", health=(), ready="", smoke=(), probe_timeout=10,
                watch_seconds=1, max_error_rate=0.01, min_success=0.995, min_requests=20, steps=(5, 100), interval=1,
                stop_old=False, min_disk_gb=0)
    return ComposeSettings(**{**base, **kw})


def test_gate_needs_enough_requests_a_low_error_rate_and_high_success():
    cs = _settings()
    assert gate_problems(cs, error_rate.Counts(200, 0, 200)) == []
    assert "only 5 requests" in gate_problems(cs, error_rate.Counts(5, 0, 5))[0]
    problems = gate_problems(cs, error_rate.Counts(100, 3, 97))
    assert any("5xx rate 3.0 % > 1 %" in p for p in problems) and any("success 97.0 %" in p for p in problems)


def test_live_color_is_the_heaviest_server_not_down():
    cs = _settings()
    text = "upstream app {\n server 127.0.0.1:8101 weight=75 max_fails=0;\n server 127.0.0.1:8102 weight=25;\n}\n"
    assert color_in(text, cs) == "blue"
    assert color_in("server 127.0.0.1:8101 down;\nserver 127.0.0.1:8102 weight=1;", cs) == "green"
    assert color_in("server 127.0.0.1:9999;", cs) == ""


def test_compose_commands_quote_and_name_the_release_files():
    layout = Layout("/srv/my app")
    rel = "20261124T050000Z"
    assert json.loads(dc.override_text(_settings(), ["web"], rel)) == {"services": {"web": {"image": f"web-web:{rel}"}}}
    assert dc.built_services({"services": {"web": {"build": {"context": "."}}, "db": {"image": "postgres"}}}) == ["web"]
    found = dc.parse_ls(json.dumps([{"Name": "web-blue", "Status": "running(1)",
                                     "ConfigFiles": f"/srv/my app/releases/{rel}/compose.yaml"}]), layout)
    assert found == {"web-blue": ("running(1)", rel)}


def test_inventory_refuses_colors_without_nginx(tmp_path):
    from fabfile.errors import InventoryError

    inv = tmp_path / "hosts.toml"
    inv.write_text('[apps.w]\nstack = "compose"\ndeploy_to = "/srv/w"\n[apps.w.compose]\nmode = "blue-green"\n'
                   'service = "web"\n')
    with pytest.raises(InventoryError, match="nginx"):
        load_inventory(inv)
    inv.write_text('[apps.w]\nstack = "compose"\ndeploy_to = "/srv/w"\n[apps.w.compose]\nsteps = [50, 25]\n')
    with pytest.raises(InventoryError, match="steps"):
        load_inventory(inv)


def test_compose_preflight_facts_from_a_shell_with_no_daemon_fail_the_checks(tmp_path):
    """The fact lines run by a real bash against a docker CLI pointed at a socket nobody serves,
    an old compose and an unwritable include: every check fails, naming what to fix."""
    from fabfile.steps import compose_preflight
    from fabfile.steps.preflight import parse_facts

    fake = tmp_path / "docker"  # compose v1 answers `compose version`; the daemon does not answer
    fake.write_text('#!/bin/sh\nif [ "$1" = compose ]; then echo 1.29.2; exit 0; fi\n'
                    'exec docker -H unix:///nonexistent/docker.sock "$@"\n')
    fake.chmod(0o755)
    inv = tmp_path / "hosts.toml"
    inv.write_text('[apps.w]\nstack = "compose"\ndeploy_to = "/srv/w"\n'
                   f'[apps.w.compose]\ndocker = "{fake}"\nmin_disk_gb = 1\n'
                   '[apps.w.nginx]\nupstream_file = "/nonexistent-shipfab/upstream.conf"\ntest = "false"\n'
                   '[hosts.h]\nhostname = "h"\napp = "w"\n')
    app = load_inventory(inv).targets["h"].app
    out = subprocess.run(["bash", "-c", "\n".join(compose_preflight.facts_lines(app))], capture_output=True,
                         text=True, timeout=60).stdout
    checks = {c.name: c for c in compose_preflight.checks(app, parse_facts(out))}
    assert not checks["docker"].ok and "is dockerd running" in checks["docker"].detail
    assert not checks["compose v2"].ok
    assert not checks["docker disk"].ok
    assert not checks["nginx include"].ok and "cannot be written" in checks["nginx include"].detail
    assert not checks["nginx test"].ok


# ---------------------------------------------------------------- the rig


@pytest.fixture(scope="module")
def compose_repo(tmp_path_factory) -> Path:
    """The example app as a git repo: v1, v2, notready (/ready 503), bad (half of / answers 500)."""
    return example_repo(tmp_path_factory.mktemp("composerepo"),
                        {"v1": {}, "v2": {}, "notready": {"FAIL_READY": "1\n"}, "bad": {"ERROR_RATE": "0.5\n"}})


@pytest.fixture
def world_factory(tmp_path, compose_repo, docker_rig):  # noqa: F811
    made: list[ComposeWorld] = []

    def make(mode: str, **compose: object) -> ComposeWorld:
        w = make_world(tmp_path, compose_repo, docker_rig, mode, **compose)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop(docker_rig)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def step_time(out: str, step: str) -> float:
    m = re.search(rf"{step}\s+ok (\d+\.\d+)s", out)
    assert m, f"no timing for {step} in:\n{out}"
    return float(m.group(1))


# ---------------------------------------------------------------- in place


def test_in_place_deploy_then_rollback_uses_the_old_images(world_factory, docker_rig):  # noqa: F811
    w = world_factory("in-place")
    out = ok(w.fab("deploy"))
    assert "build_images" in out
    port = w.ports["blue"]
    assert w.version(port) == "v1"
    first = w.current()
    assert docker_rig.docker("image", "inspect", f"{w.project}-web:{first}", check=False).returncode == 0

    with LoadGenerator(f"http://127.0.0.1:{port}/version", rate=50) as load:  # the gap in place leaves
        ok(w.fab("deploy", "--ref", "v2"))
        result = load.stop()
    assert w.version(port) == "v2"
    bad = [x.timestamp for x in result.samples if not x.ok]
    gap = (max(bad) - min(bad)) if bad else 0.0
    print(f"in-place gap: {len(bad)} of {result.total} requests failed over {gap:.2f} s")
    assert gap < 5.0, result.failures
    second = w.current()

    out = ok(w.fab("rollback"))
    assert w.version(port) == "v1"
    assert w.current() == first
    assert "image(s) of" in out and "present" in out  # the boot check found the images: no rebuild
    assert [e["status"] for e in w.log() if e["release"] == second][-1] == "rolled_back"

    # a release whose /ready fails: the previous images come back up, exit 1
    res = w.fab("deploy", "--ref", "notready")
    assert res.returncode == 1, res.stdout + res.stderr
    assert w.version(port) == "v1"
    assert w.current() == first


def test_in_place_health_is_the_app_project_running_current_and_every_url_answering(world_factory):
    """In place, `inv health` and `fab health-check` judge the app's own project: running `current` and
    every health URL answering. A URL that stops answering while the project runs is UNHEALTHY, named."""
    frontend, frontend_addr = http_backend("ok")  # a second thing the app's health depends on (a frontend, say)
    url = f"http://{frontend_addr}/"
    try:
        w = world_factory("in-place", health=["http://127.0.0.1:{port}/health", url])
        ok(w.fab("deploy"))
        current, port = w.current(), w.ports["blue"]
        inv = compose_inv_health(w)
        assert inv.returncode == 0, inv.stdout + inv.stderr
        row = next(line for line in inv.stdout.splitlines() if line.startswith("api "))
        assert " healthy " in row and f"{w.project} on 127.0.0.1:{port} runs {current}: 2 URL(s) ok" in row, row
        assert f"healthy: {w.project} on 127.0.0.1:{port} runs {current}: 2 URL(s) ok" in ok(w.fab("health-check"))
    finally:
        frontend.shutdown()
        frontend.server_close()

    assert w.version(port) == "v1"  # the project itself still serves
    inv = compose_inv_health(w)
    assert inv.returncode == 1, inv.stdout + inv.stderr
    row = next(line for line in inv.stdout.splitlines() if line.startswith("api "))
    assert " UNHEALTHY " in row and f"{w.project} on 127.0.0.1:{port}: {url}: " in row, row
    res = w.fab("health-check")
    out = res.stdout + res.stderr
    assert res.returncode == 1 and f"[api] failed: {w.project} on 127.0.0.1:{port}: {url}: " in out, out
    assert "undo:" not in out and "Traceback" not in out, out
    assert re.search(r"^api +- +failed +" + re.escape(w.project), res.stdout, re.M), out  # not "rolled_back"
    assert "nothing went live" not in out, out  # nothing was going live: a read-only check failed
    assert [e["status"] for e in w.log()] == ["success"]  # read-only: nothing logged, nothing changed


# ---------------------------------------------------------------- blue-green


def test_blue_green_under_load_a_release_failing_ready_never_gets_traffic(world_factory):
    w = world_factory("blue-green")
    ok(w.fab("deploy"))
    assert w.version() == "v1"
    with LoadGenerator(w.nginx.url + "/", rate=40) as load:
        time.sleep(0.5)
        out = ok(w.fab("deploy", "--ref", "v2"))
        flip = step_time(out, "go_live")
        live = re.search(r"(blue|green) takes all requests", out).group(1)
        time.sleep(0.5)
        assert w.version() == "v2"

        before = w.log_size()
        res = w.fab("deploy", "--ref", "notready")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "/ready" in res.stdout + res.stderr
        standby = "green" if live == "blue" else "blue"
        assert f"{standby} on 127.0.0.1:{w.ports[standby]}" in res.stdout + res.stderr
        standby_port = w.ports[standby]
        time.sleep(0.3)
        assert w.requests_to(standby_port, before) == 0  # it never received a request
        assert w.version() == "v2"

        out = ok(w.fab("rollback"))
        rollback_flip = step_time(out, "activate")
        time.sleep(0.5)
        assert w.version() == "v1"
        result = load.stop()
    assert result.total > 100
    assert result.failed == 0, result.failures
    assert flip > 0 and rollback_flip > 0  # their figures: bench/compose.py (no timing limits in tests)

    assert "flip in" in out and "up of its images" not in out  # v1 still ran on the standby color: a flip
    out = ok(w.fab("compose.switch", "--color", live))  # by hand: back to v2's color
    time.sleep(0.5)
    assert w.version() == "v2"


def test_watch_window_flips_back_when_the_new_color_answers_5xx(world_factory):
    w = world_factory("blue-green", watch_seconds=8)
    ok(w.fab("deploy"))
    with LoadGenerator(w.nginx.url + "/", rate=40) as load:
        res = w.fab("deploy", "--ref", "bad")
        load.stop()
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "watch window: 5xx rate" in out
    assert w.version() == "v1"
    assert step_time(out, "undo_switch_back") > 0, out  # the flip back ran as the undo (its time: bench/compose.py)


def compose_inv_health(w: ComposeWorld) -> subprocess.CompletedProcess[str]:
    return inv_health(w.inventory, w.tmp, env={"PATH": DEFAULT_SESSION_ENV["PATH"], "HOME": str(w.tmp)})


def test_health_is_the_live_color_running_current_and_answering(world_factory, docker_rig):  # noqa: F811
    """`inv health` and `fab health-check`: the color nginx sends requests to runs `current` and its health URLs
    answer; that color stopped (the other one never served) is UNHEALTHY, naming the project."""
    w = world_factory("blue-green")
    ok(w.fab("deploy"))
    current = w.current()
    upstream = (w.tmp / "upstream.conf").read_text()
    live, port = next((c, p) for c, p in w.ports.items() if f"server 127.0.0.1:{p} weight=100 " in upstream)
    inv = compose_inv_health(w)
    assert inv.returncode == 0, inv.stdout + inv.stderr
    row = next(line for line in inv.stdout.splitlines() if line.startswith("api "))
    assert " healthy " in row and f"{w.project}-{live} on 127.0.0.1:{port} runs {current}: 1 URL(s) ok" in row, row
    out = ok(w.fab("health-check"))
    assert f"healthy: {w.project}-{live} on 127.0.0.1:{port} runs {current}" in out

    docker_rig.docker("compose", "-p", f"{w.project}-{live}", "stop")
    inv = compose_inv_health(w)
    assert inv.returncode == 1, inv.stdout + inv.stderr
    row = next(line for line in inv.stdout.splitlines() if line.startswith("api "))
    assert " UNHEALTHY " in row and f"{w.project}-{live} is not running (exited" in row, row
    res = w.fab("health-check")
    assert res.returncode == 1 and f"{w.project}-{live} is not running" in res.stdout + res.stderr
    assert "[api] failed: " in res.stdout and "undo:" not in res.stdout, res.stdout  # read-only: nothing to undo


# ---------------------------------------------------------------- canary


def test_canary_goes_through_every_step_and_a_bad_one_stops_at_25(world_factory):
    w = world_factory("canary")
    ok(w.fab("deploy"))
    with LoadGenerator(w.nginx.url + "/", rate=40) as load:
        out = ok(w.fab("deploy", "--ref", "v2"))
        assert "25 %" in out and "100 %" in out
        assert w.version() == "v2"
        res = w.fab("compose.canary", "--ref", "bad", "--steps", "25,100", "--interval", "2")
        result = load.stop()
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "canary stopped at 25 %" in out
    assert w.version() == "v2"
    assert result.total > 100
