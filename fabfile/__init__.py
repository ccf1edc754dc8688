"""shipfab's `fab` tasks. Thin wrappers: inventory -> targets -> flow (see DESIGN.md).

`-H NAME` names a host or a group of hosts.toml (a name not there goes to Fabric/ssh
config as usual); without -H the inventory's `default` target is used.
"""
# ruff: noqa: E402  (the bytecode setting below must come before shipfab's own imports)

from __future__ import annotations

import gc
import sys

# invoke turns Python's bytecode cache off for the tasks it loads (its --write-pyc flag), so every
# `fab` compiled shipfab's ~70 modules again (~0.13 s). Back to the interpreter's own setting for
# them (python -B or PYTHONDONTWRITEBYTECODE=1 still turn it off; __pycache__/ is git-ignored).
sys.dont_write_bytecode = sys.flags.dont_write_bytecode

from fabric import task
from invoke import Collection, Exit

from . import compose_tasks, env_tasks, errors, fleet, hostkeys, streamlit_tasks, worker_tasks
from .cli import duration, fleet_targets, known_release, on_each_host, on_fleet, options_for, printer_for, run_cli, targets
from .context import DEPLOY_KINDS, HostRun, Options
from .db_tasks import backup_db, db_check, migrate, restore_db  # noqa: F401  (tasks of the namespace)
from .output import table
from .parallel import Stop
from .release import Release, new_release_id
from .remote import open_connection
from .stacks import check_health, stack_for
from .stacks import gunicorn as gunicorn_stack
from .steps import lock as lock_step
from .steps import release_log, stop_gunicorn
from .steps.host_state import read_state
from .steps.preflight import run_checks
from .strategies import symlink

# What fabric and shipfab just imported lives until the process exits: frozen out of the
# collector's sight, so the full collection at interpreter exit no longer walks it (each `fab`
# command exits ~45 ms sooner; python -X importtime / bench/deploy_vs_ssh.py).
gc.freeze()

FLEET_HELP = {
    "parallel": "hosts worked on at once (default: hosts.toml [defaults] parallel, else 10)",
    "batch": "N or P%: publish + verify that many hosts at a time, batch after batch (default: all at once)",
    "max-fail": "N or P%: failed hosts tolerated before no new batch starts (default 0)",
    "all-or-nothing": "if any host fails, also roll back the hosts that already published",
}


@task(help={"ref": "git ref to deploy (default: the app's branch)", "dry-run": "print the commands, change nothing",
            "full-restart": "stop+start gunicorn instead of a graceful reload",
            "skip-checks": "skip the pre-flight checks (logged)", "json": "write a JSON summary to this file",
            "skip-backup": "no database snapshot before migrating (logged; a failed migration cannot be undone)",
            "verbose": "show every remote command and its output", "quiet": "only problems and the summary",
            "message": "what this deploy changes (stored in the release log)",
            "kind": "the kind of change: " + "|".join(DEPLOY_KINDS) + " (stored in the release log)",
            **FLEET_HELP})
def deploy(c, ref=None, dry_run=False, full_restart=False, skip_checks=False, skip_backup=False, json=None, verbose=False,
           quiet=False, message=None, kind=None, parallel=None, batch=None, max_fail=None, all_or_nothing=False):
    """Deploy a git ref: checks, lock, code, venv, switch, reload, health check (auto-rollback on failure)."""
    if kind and kind not in DEPLOY_KINDS:
        raise Exit(f"shipfab: --kind must be one of {', '.join(DEPLOY_KINDS)}, got {kind!r}", code=errors.USAGE)
    printer, options = options_for(dry_run, verbose, quiet, ref=ref, full_restart=full_restart, skip_checks=skip_checks,
                                   skip_backup=skip_backup, message=message or "", kind=kind or "",
                                   json_path=json, batch=batch or "", max_fail=max_fail or "",
                                   all_or_nothing=all_or_nothing)
    run_cli(lambda: on_fleet(c, printer, options, parallel, fleet.deploy))


@task(help={"to": "release id to go back to (default: the one before current)", "json": "write a JSON summary here",
            "with-db": "also restore the database snapshot taken before the left release's migrations",
            "yes": "do not ask before restoring the database", **FLEET_HELP})
def rollback(c, to=None, with_db=False, yes=False, dry_run=False, json=None, verbose=False, quiet=False, parallel=None,
             batch=None, max_fail=None, all_or_nothing=False):
    """Switch back to the previous release (or --to ID), reload and health-check it (--with-db: the database too)."""
    printer, options = options_for(dry_run, verbose, quiet, json_path=json, batch=batch or "", max_fail=max_fail or "",
                                   all_or_nothing=all_or_nothing)
    run_cli(lambda: on_fleet(c, printer, options, parallel,
                             lambda found, p, opts: fleet.rollback(found, p, opts, to=to, with_db=with_db, yes=yes)))


@task
def releases(c):
    """Show the release log of each host: id, revision, ref, who, when, status, snapshot (what exists)."""
    printer = printer_for()

    def show(run: HostRun) -> str:
        records = release_log.fold(run.state.events)
        rows = []
        for rid in run.state.releases:  # only releases that exist; a directory the log never completed is shown so
            r = records.get(rid, {})
            backup = str(r.get("backup") or "")
            snap = backup.rsplit("/", 1)[-1] if backup.rsplit("/", 1)[-1] in run.state.snapshots else "-"
            rows.append([("* " if rid == run.state.current else "  ") + rid, (r.get("revision") or "")[:10],
                         r.get("ref", ""), r.get("user", ""), r.get("started", ""), duration(r),
                         r.get("status", "incomplete"), snap, streamlit_tasks.notes(r)])
        printer.line(table(["release", "revision", "ref", "who", "started", "took", "status", "snapshot", "notes"], rows),
                     run.host, level=0)
        return f"{len(rows)} release(s), current {run.state.current or '(none)'}"

    on_each_host(c, printer, Options(), "releases", show, locked=False)


@task(help={"ref": "git ref (default: the app's branch)"})
def deploy_code(c, ref=None, dry_run=False, verbose=False):
    """Step alone: create a new release directory from a git ref (not switched)."""
    printer, options = options_for(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        existing = [*run.state.releases, *(e["release"] for e in run.state.events)]
        run.release = Release(id=new_release_id(existing), ref=ref or run.app.branch)
        symlink.deploy_code(run)
        return f"release {run.release.id} at {run.release.revision[:12]} (not switched, not logged)"

    on_each_host(c, printer, options, "deploy_code", step)


@task(help={"release": "release id (default: the newest release)"})
def pip_sync(c, release=None, dry_run=False, verbose=False):
    """Step alone: build or reuse the venv of a release (default: the newest)."""
    printer, options = options_for(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        release_id = known_release(run, release or (run.state.releases[-1] if run.state.releases else ""))
        run.release = Release(id=release_id, ref="")
        return f"{symlink.pip_sync(run)} venv {run.release.venv_hash}"

    on_each_host(c, printer, options, "pip_sync", step)


@task(help={"to": "release id to make current"})
def switch_release(c, to, dry_run=False, verbose=False):
    """Step alone: point `current` at a release atomically (run `restart` after it)."""
    printer, options = options_for(dry_run, verbose, False)

    def step(run: HostRun) -> str:
        run.release = Release(id=known_release(run, to), ref="")
        symlink.switch(run, stack_for(run.app.stack).activate)
        return f"current -> {to}; run `fab restart-gunicorn` to serve it"

    on_each_host(c, printer, options, "switch_release", step)


@task(help={"full": "a new master (a handover) instead of a graceful reload"})
def restart_gunicorn(c, full=False, dry_run=False, verbose=False):
    """Step alone: reload gunicorn (or --full: hand over to a new master) and confirm it serves `current`."""
    printer, options = options_for(dry_run, verbose, False, full_restart=full)

    def step(run: HostRun) -> str:
        run.release = Release(id=known_release(run, run.state.current), ref="")
        return gunicorn_stack.restart(run)

    on_each_host(c, printer, options, "restart_gunicorn", step)


@task
def health_check(c, verbose=False):
    """Step alone: the stack's health check of each host (gunicorn: HTTP with retries; worker: the health command +
    alert figures; streamlit: every instance on current answers /_stcore/health; compose: the live project's URLs)."""
    printer, options = options_for(False, verbose, False)
    on_each_host(c, printer, options, "health_check", lambda run: f"healthy: {check_health(run)}", locked=False)


@task(help={"ref": "git ref to compare with the deployed revision", "json": "write a JSON summary here"})
def check(c, ref=None, json=None):
    """Pre-flight only: disk, memory, binaries, python, port, nginx -t, .env keys, lock, release. Changes nothing."""
    printer, options = options_for(False, False, False, ref=ref, json_path=json)

    def run_all() -> int:
        found, opts = fleet_targets(c, printer, options)
        runs = fleet.make_runs(found, printer, opts)

        def one(run: HostRun) -> None:
            run.checks = run_checks(run.remote, run.target, run.options.ref)
            run.remote.close()

        fleet.pool(runs, one, Stop())
        fleet.print_checks(runs, printer, always_show=True)
        for run in runs:
            bad = [f"{k.name}: {k.detail}" for k in run.checks if not k.ok and not k.warning]
            if bad:
                run.fail("preflight_failed", errors.PREFLIGHT_FAILED, "; ".join(bad))
            else:
                run.status = "ok"
        return fleet.summarize(runs, printer, "check", timings=False)

    run_cli(run_all)


@task
def history(c):
    """Per host: the current release and the releases that served before it (from its log), hosts in parallel;
    flags hosts that do not run the same code as the others."""
    printer = printer_for()

    def run_all() -> int:
        found, opts = fleet_targets(c, printer, Options())
        runs = fleet.make_runs(found, printer, opts)

        def one(run: HostRun) -> None:
            try:
                run.state, _ = read_state(run.remote, run.layout)
            finally:
                run.remote.close()

        fleet.pool(runs, one, Stop())
        rows = []
        for run in runs:
            records = release_log.fold(run.state.events)
            record = records.get(run.state.current, {})
            served = [rid for rid, r in records.items() if r.get("status") in ("success", "rolled_back")
                      and rid != run.state.current][-3:]
            rows.append([run.remote.host, run.state.current or "(none)", (record.get("revision") or "")[:10],
                         record.get("ref", ""), record.get("user", ""), record.get("finished", ""),
                         len(run.state.releases), " ".join(reversed(served)) or "-"])
            run.status = "ok"
        # Same revision = same code, even when deployed under another release id.
        keys = [row[2] or row[1] for row in rows]
        majority = max(set(keys), key=keys.count) if keys else ""
        for row, key in zip(rows, keys, strict=True):
            row.append("" if key == majority else "DIFFERS")
        printer.line(table(["host", "current", "revision", "ref", "who", "deployed", "releases", "served before",
                            "drift"], rows), level=0)
        differ = [f"{row[0]} ({row[1]})" for row in rows if row[-1]]
        if differ:
            printer.line(f"not on the same release as the others ({rows[keys.index(majority)][1]}): {', '.join(differ)}",
                         level=0)
        return errors.OK

    run_cli(run_all)


@task(help={"replace": "replace the recorded key(s) of the address, after checking the new fingerprint out of band"})
def trust(c, replace=False):
    """Show each host's ssh key fingerprint and add it to known_hosts (refuses a changed key unless --replace)."""
    printer = printer_for()

    def step(run: HostRun) -> str:
        host, port = run.target.hostname, run.target.port
        if run.target.ssh_alias:
            resolved = open_connection(run.target)
            host, port = resolved.host, resolved.port
        return hostkeys.trust(host, port, hostkeys.known_hosts_path(run.target.known_hosts), run.target.connect_timeout,
                              replace=replace)

    def run_all() -> int:
        ssh_targets = [t for t in targets(c, printer) if not t.local]
        # one host at a time: each rewrites the same known_hosts file
        return fleet.each_host(ssh_targets, printer, Options(parallel=1), "trust", step, locked=False, read_state=False)

    run_cli(run_all)


@task
def lock(c):
    """Take the deploy lock by hand (maintenance); `fab unlock` releases it."""
    printer = printer_for()

    def step(run: HostRun) -> str:
        run.lock_token = ""  # keep it: a manual lock outlives this command
        return "held; release it with: fab -H " + run.host + " unlock"

    on_each_host(c, printer, Options(), "manual lock", step)


@task
def unlock(c):
    """Remove the deploy lock (a stale one after a crash); prints who held it first."""
    printer = printer_for()

    def step(run: HostRun) -> str:
        holder = lock_step.holder(run.remote, run.layout)
        if holder is None:
            return "the lock was not held"
        lock_step.release(run.remote, run.layout)
        return f"removed the lock held by {holder}"

    on_each_host(c, printer, Options(), "unlock", step, locked=False)


@task
def stop(c, dry_run=False, verbose=False):
    """Stop the app's gunicorn under its manager (the sandbox: `fab -H local stop`); `restart` starts it again."""
    printer, options = options_for(dry_run, verbose, False)
    on_each_host(c, printer, options, "stop", lambda run: stop_gunicorn.stop(run.remote, run.app, run.layout))


# The task namespace: every task above, plus `env.push` / `env.diff`.
ns = Collection.from_module(sys.modules[__name__])
ns.add_task(restart_gunicorn, name="restart")  # the name before the design card's
ns.add_collection(Collection("env", env_tasks.push, env_tasks.diff))
ns.add_collection(Collection("worker", worker_tasks.gate, worker_tasks.restart, worker_tasks.cron, worker_tasks.stop))
ns.add_collection(Collection("compose", compose_tasks.switch, compose_tasks.canary))
ns.add_task(streamlit_tasks.watch)
ns.add_collection(streamlit_tasks.ns)
