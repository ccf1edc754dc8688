"""Commands from hosts.toml run in a release (the worker stack's gate, build and smoke) through
the one launcher: the release's venv first on PATH, the app's .env as its environment (never
evaluated by a shell). Output streams as it comes; a failure shows its summary: pytest's
`short test summary info` and `N failed` lines when there are any, else the last lines."""

from __future__ import annotations

import re

from invoke.exceptions import CommandTimedOut

from ..errors import StepFailed
from ..layout import Layout
from ..output import LineStream
from ..remote import Remote
from .launcher import launch_cmd, launch_stdin

SUMMARY_START = re.compile(r"^=+ short test summary info =+$")


def summary(output: str, lines: int = 12) -> str:
    """What a person needs from a failed command's output: pytest's summary, else its tail."""
    text = output.rstrip().splitlines()
    for i, line in enumerate(text):
        if SUMMARY_START.match(line.strip()):
            return "\n".join(text[i:][-lines:])
    return "\n".join(text[-lines:])


def run_in_release(remote: Remote, python: str, layout: Layout, release_id: str, commands: tuple[str, ...],
                   env: dict[str, str], timeout: float, what: str) -> str:
    """Run each command in order; StepFailed with the summary of the first that fails."""
    for command in commands:
        stream = LineStream(lambda line: remote.printer.line(line, remote.host, level=1))
        try:
            res = remote.run(launch_cmd(python, layout.release(release_id), command), warn=True, show_output=False,
                             stdin=launch_stdin(env), out_stream=stream, timeout=timeout)
        except CommandTimedOut:
            raise StepFailed(f"{remote.host}: {what} `{command}` did not finish in {timeout:g} s "
                             f"(worker.command_timeout) in release {release_id}") from None
        finally:
            stream.close()
        if remote.dry_run:
            continue
        if not res.ok:
            out = remote.printer.redact(res.stdout)
            raise StepFailed(f"{remote.host}: {what} `{command}` failed (exit {res.exited}) in release {release_id}:\n"
                             f"{summary(out) or '(no output)'}")
    return f"{len(commands)} command(s) ok" if commands else "nothing to run"
