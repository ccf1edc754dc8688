"""`./fab` and `./inv` start here: Fabric's or Invoke's own program, without the start-up work
no shipfab command needs (bench/deploy_vs_ssh.py, "overheads"):

- invoke imports `unittest.mock` (and through it asyncio and ssl) for `MockContext`, a helper
  for tests: it gets a stand-in `Mock` that imports the real one when first called;
- invoke imports its vendored YAML parser for YAML config files: it loads when first used;
- the cyclic garbage collector is off while Fabric imports (it finds no garbage there), and what
  Fabric imported is then frozen out of its sight (else the next collections walk all of it);
- the methods `@dataclass` writes for each class (source text it compiles at every start: ~30 ms
  for shipfab's ~40 dataclasses) are compiled once and kept beside the bytecode cache, keyed by
  their exact text (`MethodCache`).

Usage: python launch.py fab|inv [ARGS...]
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import importlib.machinery
import importlib.util
import marshal
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from invoke import Program

LOADED_WHEN_USED = ("invoke.vendor.yaml",)


class LoadWhenUsed:
    """A meta path finder: the modules named load when one of their attributes is first used."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = set(names)

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


class MethodCache:
    """Compiled code of the methods `@dataclass` generates, by their source text, in one file.

    `dataclasses` builds `__init__`, `__eq__`, ... as text and calls `exec` on it for every class at
    every start; `install` makes it call `exec` here, which compiles a text only when the file does
    not have it. `save` (at exit) writes the texts this process used, when one was new; never with
    `python -B` / PYTHONDONTWRITEBYTECODE. A file that is unreadable, damaged or from another
    Python version is ignored (and replaced), as Python does with a stale .pyc.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known = self._load()
        self.used: dict[str, types.CodeType] = {}
        self.compiled = 0

    def _load(self) -> dict[str, types.CodeType]:
        try:
            with open(self.path, "rb") as f:
                magic, codes = marshal.load(f)
        except (OSError, EOFError, ValueError, TypeError):
            return {}
        if magic != importlib.util.MAGIC_NUMBER or not isinstance(codes, dict):
            return {}
        return {k: v for k, v in codes.items() if isinstance(k, str) and isinstance(v, types.CodeType)}

    def exec(self, source: Any, globals: dict[str, Any] | None = None, locals: Any = None) -> None:
        """`exec` for dataclasses: the same result, from the cache when the text is known."""
        if not isinstance(source, str):
            return exec(source, globals, locals)
        code = self.known.get(source)
        if code is None:
            # as exec compiles it in dataclasses: without this module's `from __future__` flags
            code = self.known[source] = compile(source, "<string>", "exec", dont_inherit=True)
            self.compiled += 1
        self.used[source] = code
        return exec(code, globals, locals)

    def install(self) -> None:
        dataclasses.exec = self.exec  # the name dataclasses calls; a module global shadows the builtin
        atexit.register(self.save)

    def save(self) -> None:
        if not self.compiled or sys.flags.dont_write_bytecode:
            return
        part = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as f:
                marshal.dump((importlib.util.MAGIC_NUMBER, self.used), f)
            os.replace(part, self.path)  # concurrent starts: each file is whole, the last one wins
        except OSError:
            part.unlink(missing_ok=True)


def method_cache_path() -> Path:
    """Beside launch.py's own bytecode (`__pycache__/`, or under PYTHONPYCACHEPREFIX)."""
    pyc = Path(importlib.util.cache_from_source(os.path.abspath(__file__)))
    return pyc.with_name(f"dataclass-methods.{sys.implementation.cache_tag}.marshal")


def _mock(*args: Any, **kwargs: Any) -> Any:
    """invoke's `Mock`: unittest.mock.Mock, imported on the first call."""
    from unittest.mock import Mock

    return Mock(*args, **kwargs)


def import_program(name: str) -> Program:
    """Fabric's (`fab`) or Invoke's (`inv`) program object, imported with less work."""
    stand_in = types.ModuleType("unittest.mock")
    stand_in.Mock = _mock
    sys.modules["unittest.mock"] = stand_in
    sys.meta_path.insert(0, LoadWhenUsed(LOADED_WHEN_USED))
    METHODS.install()
    gc.disable()
    try:
        if name == "inv":
            from invoke.main import program
        else:
            from fabric.main import program
    finally:
        gc.freeze()
        gc.enable()
        del sys.modules["unittest.mock"]  # a later `import unittest.mock` gets the real module
    return program


METHODS = MethodCache(method_cache_path())


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("fab", "inv"):
        sys.exit("usage: python launch.py fab|inv [ARGS...]")
    program = import_program(argv[0])
    sys.argv = argv
    program.run()


if __name__ == "__main__":
    main(sys.argv[1:])
