"""hosts.toml validation: every bad inventory gives one clear message, never a traceback."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabfile.errors import InventoryError
from fabfile.inventory import load_inventory

GOOD = """
default = "prod"
[defaults]
user = "deploy"
key_filename = "~/.ssh/id_ed25519"
[apps.web]
stack = "gunicorn"
deploy_to = "/srv/web"
repo = "https://git.example.com/web.git"
[apps.web.gunicorn]
manager = "supervisor"
[apps.web.health]
url = "http://{hostname}:8000/health"
[hosts.web1]
hostname = "10.0.0.1"
primary = true
[hosts.web2]
hostname = "10.0.0.2"
port = 2222
overrides = { deploy_to = "/opt/web", gunicorn = { workers = 4 } }
[groups]
prod = ["web1", "web2"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_inventory_resolves_hosts_groups_and_defaults(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    web1, web2 = inv.resolve("prod")
    assert (web1.name, web1.hostname, web1.user, web1.port, web1.primary) == ("web1", "10.0.0.1", "deploy", 22, True)
    assert web1.key_filename == str(Path("~/.ssh/id_ed25519").expanduser())
    assert (web2.port, web2.app.deploy_to, web2.app.gunicorn.workers) == (2222, "/opt/web", 4)
    assert web1.app.gunicorn.workers == 2 and web1.app.gunicorn.program == "web"
    assert [t.name for t in inv.resolve(None)] == ["web1", "web2"]  # the default target
    assert inv.resolve("web2")[0].name == "web2"


def test_unknown_name_falls_through_to_fabric(tmp_path):
    target = load_inventory(write(tmp_path, GOOD)).resolve("deploy@other.example:2200")[0]
    assert target.ssh_alias and target.hostname == "deploy@other.example:2200" and target.app.name == "web"


def test_no_default_and_no_host_lists_known_names(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD.replace('default = "prod"', "")))
    with pytest.raises(InventoryError, match="no -H given.*known names: web1, web2, prod"):
        inv.resolve(None)


def test_env_variable_sets_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPFAB_HOSTS", str(write(tmp_path, GOOD)))
    assert load_inventory().path == tmp_path / "hosts.toml"


def test_local_host_resolves_relative_paths(tmp_path):
    text = GOOD + '\n[hosts.local]\nlocal = true\noverrides = { deploy_to = ".sandbox/web", repo = "", checkout = "." }\n'
    target = load_inventory(write(tmp_path, text)).resolve("local")[0]
    assert target.local and target.app.deploy_to == str(tmp_path / ".sandbox/web")
    assert target.app.checkout == str(tmp_path)


BAD = {
    "missing file": (None, "inventory not found"),
    "not toml": ("default = [", "not valid TOML"),
    "unknown top key": ("foo = 1\n" + GOOD, r"hosts.toml: foo: unknown key; expected one of: default, defaults"),
    "unknown app key": (
        GOOD.replace('stack = "gunicorn"', 'stack = "gunicorn"\ndeploy_too = "/x"'),
        r"apps\.web\.deploy_too: unknown key",
    ),
    "wrong type": (GOOD.replace("port = 2222", 'port = "2222"'), r"hosts\.web2\.port: expected integer, got string"),
    "bool is not int": (GOOD.replace("port = 2222", "port = true"), r"hosts\.web2\.port: expected integer, got boolean"),
    "missing required": (GOOD.replace('deploy_to = "/srv/web"\n', ""), r"apps\.web\.deploy_to: missing required key"),
    "missing health": (
        GOOD.replace('[apps.web.health]\nurl = "http://{hostname}:8000/health"\n', ""),
        r"apps\.web\.health\.url: missing required key \(the gunicorn stack",
    ),
    "unknown stack": (
        GOOD.replace('stack = "gunicorn"', 'stack = "tomcat"'),
        r"apps\.web\.stack: unknown value 'tomcat'; expected one of: gunicorn",
    ),
    "unknown manager": (GOOD.replace('manager = "supervisor"', 'manager = "runit"'), r"apps\.web\.gunicorn\.manager"),
    "group names unknown host": (
        GOOD.replace('prod = ["web1", "web2"]', 'prod = ["web1", "web3"]'),
        r"groups\.prod\[1\]: unknown host 'web3'",
    ),
    "host names unknown app": (
        GOOD.replace('hostname = "10.0.0.1"', 'hostname = "10.0.0.1"\napp = "api"'),
        r"hosts\.web1\.app: unknown app 'api'",
    ),
    "host without hostname": (GOOD.replace('hostname = "10.0.0.2"\n', ""), r"hosts\.web2\.hostname: missing required key"),
    "relative deploy_to on ssh host": (
        GOOD.replace('deploy_to = "/srv/web"', 'deploy_to = "srv/web"'),
        r"apps\.web\.deploy_to: must be an absolute path on ssh host",
    ),
    "default names nothing": (
        GOOD.replace('default = "prod"', 'default = "staging"'),
        r"default: 'staging' is not a host or group",
    ),
    "keep_releases too small": (
        GOOD.replace('stack = "gunicorn"', 'stack = "gunicorn"\nkeep_releases = 1'),
        r"apps\.web\.keep_releases: must be at least 2",
    ),
    "shared file escapes": (
        GOOD.replace('stack = "gunicorn"', 'stack = "gunicorn"\nshared_files = ["../x"]'),
        r"apps\.web\.shared_files\[0\]: must be a path inside the release",
    ),
    "repo and checkout": (
        GOOD.replace('stack = "gunicorn"', 'stack = "gunicorn"\ncheckout = "."'),
        r"apps\.web\.repo: set either repo",
    ),
    "empty group": (GOOD.replace('prod = ["web1", "web2"]', "prod = []"), r"groups\.prod: a group needs at least one host"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inventory_names_file_key_and_problem(tmp_path, case):
    text, pattern = BAD[case]
    path = write(tmp_path, text) if text is not None else tmp_path / "missing.toml"
    with pytest.raises(InventoryError, match=pattern) as info:
        load_inventory(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["wrong type", "group names unknown host", "unknown stack"])
def test_bad_inventory_on_the_command_line_prints_no_traceback(tmp_path, case):
    path = write(tmp_path, BAD[case][0])
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [sys.executable, "-m", "fabric", "-r", str(repo), "-H", "web1", "releases"],
        capture_output=True,
        text=True,
        env={"SHIPFAB_HOSTS": str(path), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 64, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert str(path) in res.stderr
