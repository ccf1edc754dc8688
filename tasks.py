"""`inv` tasks: ad-hoc health of the fleet, and the developer tasks (test, bench, sandbox)."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

from invoke import Exit, task

from fabfile.context import HostRun, Options
from fabfile.errors import ShipfabError, StepFailed
from fabfile.inventory import Target, load_inventory
from fabfile.layout import Layout
from fabfile.optional_positional import OptionalPositionalTask
from fabfile.output import Printer, Redactor, table
from fabfile.remote import ConnectionLost, HostKeyRejected, Remote
from fabfile.secret_rule import local_env
from fabfile.stacks import check_health
from fabfile.steps.host_state import read_state


def _health_row(target: Target, redact: Redactor) -> list[str]:
    """host, app, release, status, latency, detail for one target (never raises): the stack's health
    hook, as `fab health-check` runs it, but read-only, without the lock and without waiting (one probe).
    Reading the state reads the host's .env: its secrets join `redact` before anything is printed."""
    printer = Printer(redact, verbosity=-1)  # the table is the output: the hooks' own lines are not shown
    remote = Remote(target, printer)
    release, started = "?", time.monotonic()
    try:
        state = read_state(remote, Layout(target.app.deploy_to))[0]
        release = state.current or "(none)"
        if not state.current:  # a sandbox not deployed yet is shown, not a failure; a server is
            status = "not deployed" if target.local else "NOT DEPLOYED"
            return [target.name, target.app.name, release, status, "-", "no release is current"]
        run = HostRun(target, remote, printer, Options(quick=True), primary=target.name)
        run.state = state
        started = time.monotonic()
        try:
            status, detail = "healthy", check_health(run)
        except (ConnectionLost, HostKeyRejected):
            raise
        except StepFailed as exc:
            status, detail = "UNHEALTHY", str(exc).removeprefix(f"{remote.host}: ")
        return [target.name, target.app.name, release, status, f"{(time.monotonic() - started) * 1000:.0f} ms",
                " ".join(detail.split())]
    except ShipfabError as exc:
        return [target.name, target.app.name, release, "UNREACHABLE", f"{(time.monotonic() - started) * 1000:.0f} ms",
                " ".join(str(exc).split())]
    finally:
        remote.close()


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@task(klass=OptionalPositionalTask, positional=["target"],
      help={"target": "host or group of hosts.toml (default: every host)"})
def health(c, target=""):
    """Health of every host of a target, in parallel, as one table; exits 1 if any is unhealthy (a local
    sandbox that was never deployed is only listed)."""
    try:
        inventory = load_inventory()
        targets = inventory.resolve(target) if target else inventory.all_targets()
    except ShipfabError as exc:
        raise Exit(f"shipfab: {exc}", code=exc.exit_code) from None
    redact = Redactor(inventory.secrets)
    for t in targets:
        redact.add_env(local_env(), t.app)
    with ThreadPoolExecutor(max_workers=min(inventory.parallel, len(targets) or 1)) as pool:
        rows = list(pool.map(lambda t: _health_row(t, redact), targets))
    # Masked once every host's secrets are known, and before cutting (half a secret is a leak).
    rows = [[_clip(cell) for cell in row] for row in redact.mask_data(rows)]
    print(table(["host", "app", "release", "status", "latency", "detail"], rows))
    if any(row[3] not in ("healthy", "not deployed") for row in rows):
        raise Exit(code=1)


@task
def test(c):
    """Run the test suite (needs the Debian packages .ci/run installs)."""
    c.run(f"{sys.executable} -m pytest -q", pty=False)


@task
def bench(c, runs=5):
    """Benchmark shipfab's redeploy and rollback against a plain `ssh host bash -s` script."""
    c.run(f"{sys.executable} bench/deploy_vs_ssh.py --runs {int(runs)}", pty=False)


@task
def sandbox(c):
    """Deploy the sample app to the local sandbox (same as `./fab -H local deploy`)."""
    c.run("./fab -H local deploy", pty=False)
