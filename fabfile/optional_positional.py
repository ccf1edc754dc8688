"""Optional positional task arguments: `fab env.diff [FILE]`, `inv health [TARGET]`.

Invoke has none (pyinvoke/invoke#159): the parser fills a positional argument only while
its value is None, and fails ("did not receive required positional arguments") when one is
still None at the end of the task's words. A task made with `klass=OptionalPositionalTask`
keeps the defaults of its positional arguments away from the parser, so the next word fills
them, and the parser's end-of-task check gives an omitted one its default instead of failing.
"""

from __future__ import annotations

from typing import Any

from fabric.tasks import Task
from invoke.parser import Argument
from invoke.parser.parser import ParseMachine


class OptionalPositionalTask(Task):
    """A task whose positional arguments with a default may be left out."""

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args = super().get_arguments(ignore_unknown_help)
        for arg in args:
            if arg.positional and arg.default is not None:
                arg.when_omitted, arg.default = arg.default, None
        return args


_complete_context = ParseMachine.complete_context


def _complete_with_defaults(self: Any) -> None:
    """ParseMachine.complete_context, after giving omitted optional positionals their default."""
    for arg in self.context.positional_args if self.context else ():
        if arg.value is None and hasattr(arg, "when_omitted"):
            arg.value = arg.when_omitted
    _complete_context(self)


ParseMachine.complete_context = _complete_with_defaults  # type: ignore[method-assign]
