"""Progress on a terminal: a long step shows one live status line with its elapsed seconds,
cleared before the next printed line; never in a pipe (CI logs stay clean)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

from fabfile.output import Printer

from .conftest import FAB, REPO


def test_live_status_line_is_rewritten_then_cleared(capsys):
    printer = Printer(live=True)
    with printer.status("[h] pip_sync"):
        time.sleep(1.3)
        printer.line("a line in between", "h")
    printer.line("after")
    out = capsys.readouterr().out
    assert "\r[h] pip_sync ... 1s\x1b[K" in out
    assert "\r\x1b[K[h] a line in between\n" in out  # the live line is erased before a real line
    assert out.endswith("\r\x1b[Kafter\n") or out.endswith("after\n")


def test_no_live_status_when_not_a_terminal_or_not_verbosity_1(capsys):
    for printer in (Printer(live=False), Printer(live=True, verbosity=2), Printer(live=True, verbosity=0)):
        with printer.status("[h] pip_sync"):
            time.sleep(1.2)
    assert "\r" not in capsys.readouterr().out


def test_a_long_pip_sync_shows_elapsed_seconds_on_a_terminal(world):
    """The real CLI on a pseudo-terminal: a deploy whose requirements changed builds a venv (seconds)."""
    world.add_host("web1", manager="pidfile")
    env = {**os.environ, "SHIPFAB_HOSTS": str(world.inventory)}
    master, slave = pty.openpty()
    proc = subprocess.Popen([*FAB, "-r", str(REPO), "-H", "web1", "deploy", "--ref", "v3"], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, cwd=world.tmp, env=env)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(60) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "\r[web1] pip_sync ... 1s\x1b[K" in text
    assert "pip_sync        ok" in text and "deploy: ok" in text


def test_with_v_pip_output_streams_prefixed_with_the_host_while_it_runs(world):
    """-v: pip's lines arrive as pip prints them, not all at the end of the step."""
    world.add_host("web1", manager="pidfile")
    proc = world.popen_fab("-H", "web1", "deploy", "--ref", "v3", "-v")
    arrivals: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        arrivals.append((time.monotonic(), line.rstrip("\n")))
    assert proc.wait(60) == 0, "\n".join(text for _, text in arrivals)
    pip_lines = [(t, text) for t, text in arrivals if text.startswith("[web1] ") and
                 ("Processing " in text or "Looking in links" in text or "Installing collected" in text)]
    done = next(t for t, text in arrivals if text.startswith("[web1] pip_sync") and " ok " in text)
    assert pip_lines, "no pip output with -v"
    assert done - pip_lines[0][0] > 0.3  # the first pip line came while pip still worked
