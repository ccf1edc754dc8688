"""`./fab` and `./inv` start here: Fabric's or Invoke's own program, without the start-up work
no shipfab command needs (bench/deploy_vs_ssh.py, "overheads"):

- invoke imports `unittest.mock` (and through it asyncio and ssl) for `MockContext`, a helper
  for tests: it gets a stand-in `Mock` that imports the real one when first called;
- invoke imports its vendored YAML parser for YAML config files: it loads when first used;
- the cyclic garbage collector is off while Fabric imports (it finds no garbage there).

Usage: python launch.py fab|inv [ARGS...]
"""

from __future__ import annotations

import gc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
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
    gc.disable()
    try:
        if name == "inv":
            from invoke.main import program
        else:
            from fabric.main import program
    finally:
        gc.enable()
        del sys.modules["unittest.mock"]  # a later `import unittest.mock` gets the real module
    return program


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ("fab", "inv"):
        sys.exit("usage: python launch.py fab|inv [ARGS...]")
    program = import_program(argv[0])
    sys.argv = argv
    program.run()


if __name__ == "__main__":
    main(sys.argv[1:])
