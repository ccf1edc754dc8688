"""A newcomer's first ten minutes (issue 8): the README's first command as an unprivileged
user on a fresh clone, two sandboxes side by side, `stop`, the messages for unknown names and
a missing inventory, `extra_requirements`, through the real CLI; the builders as strings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from fabfile.errors import InventoryError
from fabfile.inventory import SANDBOX_PORTS, parse_inventory, sandbox_port
from fabfile.layout import Layout
from fabfile.lookup_help import unknown_name_message
from fabfile.steps.pip_sync import sync_script
from fabfile.steps.stop_gunicorn import stop_cmd

REPO = Path(__file__).resolve().parent.parent
APP = {"stack": "gunicorn", "deploy_to": ".sandbox/s", "health": {"url": "http://127.0.0.1:{sandbox_port}/health"},
       "gunicorn": {"bind": "127.0.0.1:{sandbox_port}"}}


def inventory(app: dict, hosts: dict) -> object:
    return parse_inventory({"apps": {"s": app}, "hosts": hosts}, Path("/clone/hosts.toml"))


def fab(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real CLI, as `python -m fabric` (the controller's python, which has the requirements)."""
    env = {k: v for k, v in (env or os.environ).items() if k != "SHIPFAB_HOSTS"}
    root = cwd if (cwd / "fabfile").is_dir() else REPO
    return subprocess.run([sys.executable, "-m", "fabric", "-r", str(root), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


# ---------------------------------------------------------------- pure builders and settings


def test_sandbox_port_comes_from_the_sandbox_path_and_only_for_the_local_host():
    local = inventory(APP, {"local": {"local": True}}).targets["local"].app
    port = sandbox_port("/clone/.sandbox/s")
    assert local.gunicorn.bind == f"127.0.0.1:{port}" and local.health.url == f"http://127.0.0.1:{port}/health"
    assert SANDBOX_PORTS[0] <= port < sum(SANDBOX_PORTS)
    assert sandbox_port("/clone-a/.sandbox/s") != sandbox_port("/clone-b/.sandbox/s")
    with pytest.raises(InventoryError, match=r"apps\.s\.gunicorn\.bind: \{sandbox_port\} is only for a local"):
        inventory({**APP, "deploy_to": "/srv/s"}, {"web1": {"hostname": "10.0.0.1"}})


def test_extra_requirements_join_the_venv_hash_and_install_after_requirements_txt():
    app = inventory({**APP, "extra_requirements": ["gunicorn==23.0.0", "psycopg2-binary"]},
                    {"local": {"local": True}}).targets["local"].app
    assert app.extra_requirements == ("gunicorn==23.0.0", "psycopg2-binary")
    script = sync_script(Layout("/srv/a"), "R1", "python3", "", app.extra_requirements)
    assert "echo extra 'gunicorn==23.0.0 psycopg2-binary'; } | sha256sum" in script
    req_line = script.index("-r /srv/a/releases/R1/requirements.txt")
    assert script.index('"$b/bin/pip" install --disable-pip-version-check gunicorn==23.0.0 psycopg2-binary &&') > req_line
    assert "extra" not in sync_script(Layout("/srv/a"), "R1", "python3", "")  # no extras: old venvs keep their hash
    for bad in ("-e .", "gunicorn ==23", ""):
        with pytest.raises(InventoryError, match=r"apps\.s\.extra_requirements\[0\]: not a requirement specifier"):
            inventory({**APP, "extra_requirements": [bad]}, {"local": {"local": True}})


def test_stop_commands_per_manager():
    app = inventory(APP, {"local": {"local": True}}).targets["local"].app
    script = stop_cmd(app, Layout("/srv/a"))
    assert "pid=$(cat /srv/a/shared/gunicorn.pid 2>/dev/null)" in script
    assert "grep -qF -- /srv/a/shared/gunicorn.pid; then echo NOT_RUNNING; exit 0; fi" in script  # never a stranger
    assert 'kill -TERM "$pid"' in script and script.endswith('echo "STOPPED $pid"')
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    sup = inventory({**APP, "deploy_to": "/srv/s", "gunicorn": {"manager": "supervisor", "program": "web app"},
                     "health": {"url": "http://x/health"}}, {"w": {"hostname": "w"}}).targets["w"].app
    assert stop_cmd(sup, Layout("/srv/s")) == "supervisorctl stop 'web app' && echo STOPPED 'web app'"


def test_unknown_name_lists_hosts_and_groups_closest_first():
    inv = parse_inventory({"apps": {"s": {**APP, "deploy_to": "/srv/s", "health": {"url": "http://x/"},
                                          "gunicorn": {}}},
                           "hosts": {"web1": {"hostname": "a"}, "web2": {"hostname": "b"}, "db": {"hostname": "c"}},
                           "groups": {"prod": ["web1", "web2"]}}, Path("hosts.toml"))
    message = unknown_name_message(inv, "wbe1")
    assert message.startswith("unknown host or group 'wbe1': not in hosts.toml, ~/.ssh/config or DNS. Did you mean web1")
    assert message.endswith("Known hosts: db, web1, web2; groups: prod")


# ---------------------------------------------------------------- the real CLI


def test_an_unknown_host_is_one_line_with_the_known_names():
    res = fab(REPO, "-H", "locl", "check")
    assert res.returncode == 64, res.stderr
    assert res.stderr.strip().splitlines() == [
        "shipfab: unknown host or group 'locl': not in hosts.toml, ~/.ssh/config or DNS. Did you mean local or "
        "local-worker? Known hosts: local, local-streamlit, local-worker; groups: (none)"]
    assert res.stdout == ""


def test_outside_the_project_the_message_says_where_it_looked(tmp_path):
    res = fab(tmp_path, "-H", "local", "check")
    assert res.returncode == 64
    assert f"inventory not found: no hosts.toml in the current directory ({tmp_path}) and SHIPFAB_HOSTS is not set" \
        in res.stderr
    assert f"shipfab's tasks are in {REPO}/fabfile" in res.stderr and "Traceback" not in res.stderr
    res = fab(tmp_path, "-H", "local", "check", env={**os.environ, "SHIPFAB_HOSTS": str(tmp_path / "nope.toml")})
    assert res.returncode == 64


@pytest.mark.skipif(os.geteuid() != 0, reason="creates an unprivileged user (runuser, useradd)")
def test_readme_first_command_works_for_an_unprivileged_user_on_a_fresh_clone():
    res = subprocess.run(["bash", str(REPO / ".ci/newcomer")], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "on a fresh clone, /usr/bin/python3:" in res.stdout
    assert "$ ./fab -H local deploy\n" in res.stdout and "deploy: ok" in res.stdout
    # then the rest of "Try it", line by line; its last line stopped the sandbox, so the final
    # `stop` from another directory finds nothing running
    for line in ("./fab -H local releases", "./fab -H local rollback", "./inv health", "./fab -H local stop"):
        assert f"$ {line}\n" in res.stdout, line
    assert "README line failed" not in res.stderr
    assert re.search(r"gunicorn was not running", res.stdout)


@pytest.fixture(scope="module")
def two_clones(tmp_path_factory):
    """Two fresh clones of this checkout; the first with an extra requirement. Their sandboxes are stopped after."""
    clones = [tmp_path_factory.mktemp("clone") / "shipfab" for _ in range(2)]
    for clone in clones:
        subprocess.run(["bash", str(REPO / ".ci/fresh-clone"), str(clone)], check=True)
    hosts = clones[0] / "hosts.toml"
    hosts.write_text(hosts.read_text().replace('python = "python3"\n',
                                               'python = "python3"\nextra_requirements = ["six==1.17.0"]\n', 1))
    yield clones
    for clone in clones:
        fab(clone, "-H", "local", "stop")


def test_two_clones_each_deploy_and_serve_their_own_sandbox_then_stop(two_clones):
    ports = []
    for clone in two_clones:
        res = fab(clone, "-H", "local", "deploy")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        ports.append(sandbox_port(str(clone / ".sandbox/sample")))
        assert f"127.0.0.1:{ports[-1]} is free" in res.stdout
    assert ports[0] != ports[1]
    for port in ports:  # both serve at once
        assert get(f"http://127.0.0.1:{port}/health") == 200
    venv = next((two_clones[0] / ".sandbox/sample/current/.venv/lib").glob("python3*/site-packages"))
    assert (venv / "six.py").is_file()  # the extra requirement
    assert not list((two_clones[1] / ".sandbox/sample/current/.venv/lib").glob("python3*/site-packages/six.py"))

    res = fab(two_clones[0], "-H", "local", "stop")
    assert res.returncode == 0 and re.search(r"\[local\] stop +ok .*gunicorn stopped \(\d+\)", res.stdout), res.stdout
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{ports[0]}/health")
    assert get(f"http://127.0.0.1:{ports[1]}/health") == 200  # the other sandbox is untouched
    again = fab(two_clones[0], "-H", "local", "stop")
    assert again.returncode == 0 and "gunicorn was not running" in again.stdout
