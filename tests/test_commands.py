"""Pure command builders: exact strings, no SSH (Kamal-style)."""

import shlex
import subprocess
from datetime import UTC, datetime

import pytest

from fabfile.context import HostState
from fabfile.fleet import EXIT_PRIORITY
from fabfile.hostflow import with_notes
from fabfile.inventory import parse_inventory
from fabfile.layout import Layout
from fabfile.managers import boot_probe
from fabfile.managers.boot_check import PROBE, boot_check_script, parse_probe
from fabfile.managers.gunicorn import gunicorn_argv, handover_argv, manager_cmds, parse_markers, restart_script
from fabfile.output import Redactor, table
from fabfile.probes.http import curl_cmd, curl_config, evaluate, json_field, parse_curl
from fabfile.release import new_release_id
from fabfile.steps import host_state, lock, prune, release_log
from fabfile.steps.deploy_code import (
    archive_spec,
    extract_cmd,
    link_shared_cmd,
    mirror_extract_cmd,
    mirror_update_cmd,
    publish_cmd,
    remove_cmd,
)
from fabfile.steps.pip_sync import cleanup_cmd, parse_sync, sync_script
from fabfile.steps.switch_release import switch_back_cmd, switch_cmd

L = Layout("/srv/my app")


def app(manager="pidfile", **gunicorn):
    data = {
        "apps": {"web": {"stack": "gunicorn", "deploy_to": "/srv/my app",
                         "gunicorn": {"manager": manager, **gunicorn}, "health": {"url": "http://{hostname}/h"}}},
        "hosts": {"h": {"hostname": "10.0.0.5"}},
    }
    return parse_inventory(data, __import__("pathlib").Path("hosts.toml")).targets["h"].app


def test_switch_is_atomic_symlink_then_rename():
    assert switch_cmd(L, "20261123T101500Z") == (
        "ln -sfn releases/20261123T101500Z '/srv/my app/current.tmp-20261123T101500Z' && "
        "mv -T '/srv/my app/current.tmp-20261123T101500Z' '/srv/my app/current'"
    )


def test_lock_commands():
    owner = {"user": "ann", "controller": "laptop", "pid": 7, "since": "2026-11-23T10:00:00Z", "ref": "v1", "token": "t0k"}
    script = host_state.lock_cmd(L, owner)
    assert "if mkdir '/srv/my app/.shipfab/lock' 2>/dev/null; then" in script
    # owner.json is written under a temp name and renamed; a lock whose owner file cannot be written is removed
    assert "> '/srv/my app/.shipfab/lock/owner.json'.tmp 2>/dev/null && mv -f" in script
    assert "else rm -rf '/srv/my app/.shipfab/lock'; echo 'LOCK FAILED" in script
    # taking and releasing each hold the flock of .shipfab/ (fd 9): a release waits for a lock script still running
    assert "exec 9< '/srv/my app/.shipfab' && flock -w 30 9 || { echo 'LOCK BUSY'; exit 0; }" in script
    assert script.index("flock -w 30 9") < script.index("if mkdir") < script.index("exec 9<&-")
    assert lock.release_cmd(L, "t0k") == (
        "if [ -d '/srv/my app/.shipfab' ]; then exec 9< '/srv/my app/.shipfab' && flock -w 30 9; fi\n"
        "if [ ! -d '/srv/my app/.shipfab/lock' ]; then echo FREE; elif grep -q t0k '/srv/my app/.shipfab/lock/owner.json' "
        "2>/dev/null; then rm -rf '/srv/my app/.shipfab/lock' && echo RELEASED; else echo NOT_OURS; fi\nexec 9<&-")
    assert lock.describe_holder('{"user":"ann","controller":"laptop","pid":7,"since":"S","ref":"v1"}') == (
        "ann@laptop (pid 7) since S, deploying 'v1'"
    )
    assert "unknown holder" in lock.describe_holder("garbage") and "unknown holder" in lock.describe_holder("{}")


def test_lock_names_a_dead_holder_on_this_controller():
    import os
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert "not running on this controller: the lock is stale" in lock.pid_note({"controller": "me", "pid": dead.pid}, "me")
    assert "still running" in lock.pid_note({"controller": "me", "pid": os.getpid()}, "me")
    assert lock.pid_note({"controller": "elsewhere", "pid": os.getpid()}, "me") == ""


def test_lock_and_state_script_runs(tmp_path):
    """The real script against a real directory: taken once, then held; state sections parse."""
    root = tmp_path / "it's an app"  # a quote in deploy_to stays inside its quotes
    lay = Layout(str(root))
    (root / "releases" / "R1").mkdir(parents=True)
    (root / "releases" / ".tmp-R2").mkdir()
    (root / "current").symlink_to("releases/R1")
    owner = {"user": "a", "controller": "c", "pid": 1, "since": "s", "ref": "r", "token": "tk"}
    script = host_state.lock_cmd(lay, owner) + "\n" + host_state.state_cmd(lay)
    first = host_state.sections(subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout)
    assert first["head"].strip() == "LOCK ACQUIRED"
    state = host_state.parse_state(first, "x")
    assert state.current == "R1" and state.releases == ("R1",)  # a build dir is no release
    second = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout
    assert second.startswith("LOCK HELD") and '"token": "tk"' in second
    assert subprocess.run(["bash", "-c", lock.release_cmd(lay, "other")], capture_output=True, text=True).stdout == "NOT_OURS\n"
    assert subprocess.run(["bash", "-c", lock.release_cmd(lay, "tk")], capture_output=True, text=True).stdout == "RELEASED\n"


def test_a_release_waits_for_a_lock_command_still_running_and_a_busy_lock_is_reported(tmp_path, monkeypatch):
    """The flock of .shipfab/: a release checks the token only once a lock command holding it
    (an orphan of a cut link, writing owner.json late) has ended; a lock command that cannot get
    it in time says LOCK BUSY and takes nothing."""
    lay = Layout(str(tmp_path / "app"))
    (tmp_path / "app" / ".shipfab").mkdir(parents=True)
    late_orphan = (f"sleep 1; mkdir {shlex.quote(lay.lock)} && printf '%s' '{{\"token\": \"tk\"}}' > "
                   f"{shlex.quote(lay.lock + '/owner.json')}")
    holder = subprocess.Popen(["flock", lay.meta, "sh", "-c", late_orphan])
    _until_flocked_by(holder, lay.meta)
    assert subprocess.run(["bash", "-c", lock.release_cmd(lay, "tk")], capture_output=True, text=True).stdout == "RELEASED\n"
    assert holder.wait(10) == 0 and not (tmp_path / "app" / ".shipfab" / "lock").exists()

    monkeypatch.setattr(host_state, "META_WAIT", 1)
    owner = {"user": "a", "controller": "c", "pid": 1, "since": "s", "ref": "r", "token": "t2"}
    with subprocess.Popen(["flock", lay.meta, "sleep", "5"]) as busy:
        _until_flocked_by(busy, lay.meta)
        out = subprocess.run(["bash", "-c", host_state.lock_cmd(lay, owner)], capture_output=True, text=True).stdout
        busy.kill()
    assert out == "LOCK BUSY\n" and not (tmp_path / "app" / ".shipfab" / "lock").exists()


def _until_flocked_by(holder: subprocess.Popen, path: str) -> None:
    """Wait until `holder` (a `flock path ...` just started) holds the flock of `path`."""
    while subprocess.run(["flock", "-n", path, "true"]).returncode == 0:
        assert holder.poll() is None


def test_deploy_code_builds_in_a_temp_dir_and_renames():
    assert archive_spec("abc", "") == "abc" and archive_spec("abc", "examples/app") == "abc:examples/app"
    assert extract_cmd(L, "R1") == (
        "set -o pipefail; rm -rf '/srv/my app/releases/.tmp-R1' && mkdir -p '/srv/my app/releases/.tmp-R1' && "
        "base64 -d | tar -xz -C '/srv/my app/releases/.tmp-R1'"
    )
    assert publish_cmd(L, "R1") == "mv -T '/srv/my app/releases/.tmp-R1' '/srv/my app/releases/R1'"
    assert remove_cmd(L, "R1").startswith(
        "if [ \"$(readlink '/srv/my app/current')\" = releases/R1 ]; then echo KEPT; else rm -rf -- ")
    assert mirror_update_cmd(L, "git@host:team/app.git", "v1;rm") == (
        "if [ -d '/srv/my app/repo' ]; then git -C '/srv/my app/repo' remote update --prune >/dev/null; "
        "else git clone --quiet --mirror git@host:team/app.git '/srv/my app/repo'; fi && "
        "git -C '/srv/my app/repo' rev-parse --verify 'v1;rm^{commit}'"
    )
    assert mirror_extract_cmd(L, "R1", "abc", "sub").endswith(
        "git -C '/srv/my app/repo' archive abc:sub | tar -x -C '/srv/my app/releases/.tmp-R1'")
    linked = link_shared_cmd(L, "R1", "abc", (".env",), ("logs",))
    assert linked.startswith("printf '%s\\n' abc > '/srv/my app/releases/.tmp-R1/REVISION' && ")
    assert "ln -s '/srv/my app/shared/logs' '/srv/my app/releases/.tmp-R1/logs'" in linked


def test_pip_sync_builds_under_its_own_name_and_links_when_complete():
    script = sync_script(L, "R1", "python3", "/srv/wheels")
    assert "--no-index --find-links /srv/wheels -r '/srv/my app/releases/R1/requirements.txt'" in script
    assert 'b=$v.build-R1' in script and 'mv -T "$v.tmp" "$v"' in script
    assert script.endswith("ln -sfn \"$v\" '/srv/my app/releases/R1/.venv'")
    assert "--no-index" not in sync_script(L, "R1", "python3", "")
    assert parse_sync("REUSED 0123456789abcdef\n") == ("0123456789abcdef", False)


def test_pip_sync_hashes_the_same_version_text_as_python_prints():
    """Given python's sys.version (from the pre-flight facts), the hash is the one python's own answer gives."""
    def venv_hash(version: str) -> str:
        first = sync_script(L, "R1", "python3", "/srv/wheels", version=version).split("\nv=")[0]  # the hash
        assert ("python3 -I -S" in first) == (not version)
        return subprocess.run(["bash", "-c", first + '\necho "$h"'], capture_output=True, text=True, check=True).stdout
    real = subprocess.run(["python3", "-I", "-S", "-c", "import sys; print(sys.version)"], capture_output=True,
                          text=True, check=True).stdout.rstrip("\n")
    assert venv_hash("") == venv_hash(real) != venv_hash(real + " other")
    assert venv_hash("3.9.2 (default,\n  Feb 28 2021) [GCC 10.2.1]") != venv_hash("")  # several lines, quoted whole


def test_python_version_from_the_facts():
    from fabfile.steps.preflight import python_version

    assert python_version("df 1 2\npyver 3.11.2 '3.11.2 (main, Mar 13 2023) [GCC 12.2.0]'\n") == \
        "3.11.2 (main, Mar 13 2023) [GCC 12.2.0]"
    assert python_version("pyver 3.9.2 '3.9.2 (default)\\n[GCC]'") == "3.9.2 (default)\n[GCC]"
    assert python_version("pyver -") == python_version("pyver 3.11.2") == python_version("") == ""
    assert python_version("pyver 3.11.2 __import__('os')") == python_version("pyver 3.1 42") == ""
    assert parse_sync("noise\nBUILT fedcba9876543210\n") == ("fedcba9876543210", True)


def test_interrupted_venv_build_is_never_reused(tmp_path):
    """A build cut short (no `venvs/<hash>` link) is rebuilt; the cleanup removes only unlinked builds."""
    lay = Layout(str(tmp_path))
    venvs = tmp_path / "venvs"
    (venvs / "aaaa.build-R1" / "bin").mkdir(parents=True)  # interrupted: no link
    (venvs / "bbbb.build-R1" / "bin").mkdir(parents=True)
    (venvs / "bbbb").symlink_to("bbbb.build-R1")  # complete
    subprocess.run(["bash", "-c", cleanup_cmd(lay, "R1")], check=True)
    assert sorted(p.name for p in venvs.iterdir()) == ["bbbb", "bbbb.build-R1"]


def test_gunicorn_argv_runs_through_current():
    a = app(bind="127.0.0.1:9000", workers=3)
    assert gunicorn_argv(a, L) == [
        "/srv/my app/current/.venv/bin/python", "/srv/my app/current/.venv/bin/gunicorn",
        "--chdir", "/srv/my app/current", "--bind", "127.0.0.1:9000", "--workers", "3", "--timeout", "30",
        "--pid", "/srv/my app/shared/gunicorn.pid", "--error-logfile", "/srv/my app/shared/gunicorn.log",
        "--control-socket", "/srv/my app/shared/gunicorn.ctl", "app:app",
    ]  # pidfile: no --reuse-port (a USR2 re-exec of a --reuse-port master fails in gunicorn 27)
    assert "--control-socket" not in gunicorn_argv(app(control_socket=False), L)
    for manager in ("supervisor", "systemd"):
        argv = gunicorn_argv(app(manager), L)
        assert argv[argv.index("--error-logfile") + 2] == "--reuse-port"


def test_handover_argv_runs_the_release_itself_next_to_the_managed_master():
    assert handover_argv(app("supervisor", bind="127.0.0.1:9000"), L, "R1") == [
        "/srv/my app/releases/R1/.venv/bin/python", "/srv/my app/releases/R1/.venv/bin/gunicorn",
        "--chdir", "/srv/my app/releases/R1", "--bind", "127.0.0.1:9000", "--workers", "2", "--timeout", "30",
        "--pid", "/srv/my app/shared/gunicorn-handover.pid", "--error-logfile", "/srv/my app/shared/gunicorn.log",
        "--reuse-port", "--no-control-socket", "app:app", "--daemon",
    ]
    assert "--no-control-socket" not in handover_argv(app("systemd", control_socket=False), L, "R1")


def test_manager_commands_systemd_supervisor():
    assert manager_cmds(app("systemd", program="web", sudo=True), L) == {
        "pid": "systemctl show -p MainPID --value web",
        "start": "sudo -n systemctl start web",
        "reload": "sudo -n systemctl reload web",
        "restart": "sudo -n systemctl restart web",
    }
    assert manager_cmds(app("supervisor", supervisor_conf="/etc/s.conf"), L) == {
        "pid": "supervisorctl -c /etc/s.conf pid web",
        "start": "supervisorctl -c /etc/s.conf start web >/dev/null",
        "reload": "supervisorctl -c /etc/s.conf signal HUP web >/dev/null",
        "restart": "supervisorctl -c /etc/s.conf restart web >/dev/null",
    }
    pid = manager_cmds(app(), L)
    assert pid["pid"] == "cat '/srv/my app/shared/gunicorn.pid'"
    assert pid["start"].startswith("cd '/srv/my app/current' && '/srv/my app/current/.venv/bin/python' ")
    assert pid["start"].endswith("app:app --daemon </dev/null >/dev/null 2>&1")
    assert pid["restart"] == 'kill -TERM "$pid"; wait_gone "$pid"; ' + pid["start"]


NEW_MASTER = {
    "pidfile": 'kill -USR2 "$pid" && old=$pid || exit 1; echo ACTION upgrade',
    "supervisor": "{ handover; supervisorctl restart web >/dev/null; } || exit 1; echo ACTION restart",
    "systemd": "{ handover; systemctl restart web; } || exit 1; echo ACTION restart",
}


@pytest.mark.parametrize("manager", sorted(NEW_MASTER))
def test_restart_script_is_valid_shell_and_picks_new_master_by_manager(manager):
    script = restart_script(app(manager), L, "R1")
    for shell in ("bash", "sh"):
        assert subprocess.run([shell, "-n", "-c", script]).returncode == 0
    assert f'elif [ "$venv" != "$ran" ]; then\n  {NEW_MASTER[manager]}\n' in script
    assert "elif [ 0 = 1 ]" in script and "elif [ 1 = 1 ]" in restart_script(app(manager), L, "R1", full=True)


@pytest.mark.parametrize("manager", ["supervisor", "systemd"])
def test_restart_script_hands_over_under_supervisor_and_systemd(manager):
    script = restart_script(app(manager), L, "R1")
    assert "hpid='/srv/my app/shared/gunicorn-handover.pid'" in script
    assert f"(cd '/srv/my app/releases/R1' && {shlex.join(handover_argv(app(manager), L, 'R1'))} </dev/null" in script
    assert "grep -qx -- --reuse-port" in script and "/proc/$pid/cmdline" in script  # else: plain restart + WARN
    assert 'echo "HANDOVER $hp $n"' in script and "cat /proc/sys/net/ipv4/tcp_migrate_req" in script
    assert script.endswith("\nstop_handover || :")  # once the managed master serves: also a leftover's
    assert "handover" not in restart_script(app("pidfile"), L, "R1")


def test_restart_markers_and_warnings():
    out = "WARN net.ipv4.tcp_migrate_req=0: ...\nHANDOVER 41 2\nACTION restart\nnoise\nSERVING 57 2\n"
    assert parse_markers(out) == ({"HANDOVER": "41 2", "ACTION": "restart", "SERVING": "57 2"},
                                  ["net.ipv4.tcp_migrate_req=0: ..."])


def test_boot_check_script_passes_the_probe_and_every_value_as_quoted_arguments():
    a = app("supervisor", app_module="wsgi:create_app()")
    script = boot_check_script(a, L, "R1")
    assert script.startswith("cd '/srv/my app/releases/R1' && exec timeout -k 2 40 ")
    # the health URL (it may hold a secret) goes on stdin, never on the command line
    assert shlex.split(script)[8:] == ["/srv/my app/releases/R1/.venv/bin/python", "-c", PROBE, "wsgi:create_app()",
                                       "30", "5"]
    assert "10.0.0.5" not in script and "/h" not in shlex.split(script)[-3:]
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_boot_probe_answers_are_parsed_from_the_last_marker_line():
    ok = 'app noise\nBOOT_RESULT {"status": 200, "body": "{}", "seconds": 0.25}\n'
    assert parse_probe(ok) == ("BOOT_RESULT", {"status": 200, "body": "{}", "seconds": 0.25})
    err = 'BOOT_ERROR {"phase": "import", "error": "ModuleNotFoundError: No module named \'x\'", "trace": []}'
    assert parse_probe(err)[1]["error"] == "ModuleNotFoundError: No module named 'x'"
    assert parse_probe("Killed\n") is None and parse_probe("BOOT_RESULT {cut") is None


def test_boot_probe_environ_is_a_complete_get_of_the_health_url():
    env = boot_probe._environ("https://web.example:8443/api/h%C3%A9alth?full=1")
    assert (env["REQUEST_METHOD"], env["PATH_INFO"], env["QUERY_STRING"]) == ("GET", "/api/h\xc3\xa9alth", "full=1")
    assert (env["HTTP_HOST"], env["SERVER_NAME"], env["SERVER_PORT"], env["wsgi.url_scheme"]) == (
        "web.example:8443", "web.example", "8443", "https")
    assert env["wsgi.input"].read() == b"" and env["wsgi.errors"] is not None


def test_scripts_are_valid_shell():
    scripts = (sync_script(L, "R1", "python3", ""), prune.prune_cmd(L, ["R0"], ["R0.dump"]), host_state.state_cmd(L),
               cleanup_cmd(L, "R1"), switch_back_cmd(L, "R2", "R1"), remove_cmd(L, "R1"))
    for script in scripts:
        assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0


def _events(*pairs):
    return tuple({"release": r, "event": "deploy", "status": s} for r, s in pairs)


def test_rollback_goes_to_the_release_that_served_before_current_per_the_log():
    """deploy A, deploy B, rollback, deploy C, rollback -> A (B was rolled back), whatever the directories say."""
    events = _events(("A", "success"), ("B", "success")) + (
        {"release": "B", "event": "rollback", "status": "rolled_back", "rolled_back_to": "A"},
        {"release": "A", "event": "rollback_to", "status": "success"},
    ) + _events(("C", "success"))
    state = HostState(current="C", releases=("A", "B", "C"), events=events)
    assert release_log.rollback_target(state, None, "h") == "A"
    assert release_log.served(events) == ["A", "B", "A", "C"]


def test_rollback_skips_failed_and_incomplete_releases():
    events = _events(("A", "success"), ("B", "failed"))
    # X: a directory left by a killed deploy (never logged) that became current
    state = HostState(current="X", releases=("A", "B", "X"), events=events)
    assert release_log.rollback_target(state, None, "h") == "A"
    with pytest.raises(Exception, match="B failed to deploy"):
        release_log.rollback_target(HostState(current="A", releases=("A", "B"), events=events), "B", "h")
    with pytest.raises(Exception, match="never finished deploying"):
        release_log.rollback_target(HostState(current="A", releases=("A", "X"), events=events), "X", "h")
    with pytest.raises(Exception, match="unknown release 'R9'; valid ids: A"):
        release_log.rollback_target(state, "R9", "h")
    with pytest.raises(Exception, match="already the current"):
        release_log.rollback_target(state, "X", "h")
    with pytest.raises(Exception, match="no earlier release"):
        release_log.rollback_target(HostState(current="A", releases=("A",), events=events), None, "h")


def test_prune_removes_failed_and_incomplete_first_never_the_rollback_target():
    events = _events(("R1", "success"), ("R2", "success"), ("R3", "failed"), ("R5", "success"), ("R6", "success"))
    state = HostState(current="R6", releases=("R1", "R2", "R3", "R4", "R5", "R6"), events=events)
    assert release_log.releases_to_prune(state, keep=2) == ["R1", "R2", "R3", "R4"]
    # rolled back from R6 to R2: R2 is current, R1 served before it and stays
    back = events + ({"release": "R6", "status": "rolled_back", "rolled_back_to": "R2"},
                     {"release": "R2", "event": "rollback_to", "status": "success"})
    state = HostState(current="R2", releases=("R1", "R2", "R3", "R4", "R5", "R6"), events=back)
    assert release_log.previous_served(state) == "R5"
    assert release_log.releases_to_prune(state, keep=2) == ["R1", "R3", "R4"]


def test_snapshots_are_kept_for_kept_releases():
    state = HostState(snapshots=("R1.dump", "R1.dump.ok", "R2.dump", "R2.dump.ok", "M1.dump", "M2.dump", "R4.dump"))
    assert release_log.snapshots_to_prune(state, ["R2", "R4"], ".dump", keep=1) == ["M1", "M2"]


def test_prune_script_removes_unused_venvs_and_builds(tmp_path):
    lay = Layout(str(tmp_path))
    rel, venvs = tmp_path / "releases", tmp_path / "venvs"
    for name in ("R1", "R2", ".tmp-R3"):
        (rel / name).mkdir(parents=True)
    for h in ("used", "old"):
        (venvs / f"{h}.build-X").mkdir(parents=True)
        (venvs / h).symlink_to(f"{h}.build-X")
    (venvs / "dead.build-Y").mkdir()
    (rel / "R2" / ".venv").symlink_to(venvs / "used")
    subprocess.run(["bash", "-c", prune.prune_cmd(lay, ["R1"], [])], check=True)
    assert sorted(p.name for p in rel.iterdir()) == ["R2"]
    assert sorted(p.name for p in venvs.iterdir()) == ["used", "used.build-X"]


def test_release_ids_are_timestamps_and_strictly_increase():
    now = datetime(2026, 11, 23, 10, 15, 0, 500, tzinfo=UTC)
    assert new_release_id([], now) == "20261123T101500Z"
    assert new_release_id(["20261123T101500Z"], now) == "20261123T101501Z"
    assert new_release_id(["20261123T101500Z", "20261123T101501Z"], now) == "20261123T101502Z"


def test_release_log_append_and_fold():
    assert release_log.append_cmd(L, {"release": "R1", "status": "success"}) == (
        "mkdir -p '/srv/my app/.shipfab' && printf '%s\\n' '{\"release\":\"R1\",\"status\":\"success\"}' "
        ">> '/srv/my app/.shipfab/releases.jsonl'"
    )
    text = '{"release":"R2","status":"success","ref":"v2"}\nnot json\n{"release":"R1","status":"success"}\n' \
           '{"release":"R2","status":"rolled_back"}\n'
    assert release_log.fold(host_state.parse_events(text)) == {
        "R1": {"release": "R1", "status": "success"}, "R2": {"release": "R2", "status": "rolled_back", "ref": "v2"}}


def test_health_evaluate_and_curl():
    h = app().health
    assert evaluate(h, 200, "{}") == (True, "status 200")
    assert evaluate(h, None, "Connection refused") == (False, "no HTTP answer: Connection refused")
    assert evaluate(h, 500, '{"status": "broken"}') == (False, "status 500 (expected 200); body: '{\"status\": \"broken\"}'")
    from dataclasses import replace
    hj = replace(h, json={"status": "ok", "db.ok": True}, body="")
    assert evaluate(hj, 200, '{"status": "ok", "db": {"ok": false}}') == (False, "JSON field 'db.ok' is False (expected True)")
    assert evaluate(hj, 200, "<html>") == (False, "body is not JSON; body: '<html>'")
    assert evaluate(replace(h, body="hello"), 200, "bye")[1] == "body does not contain 'hello'; body: 'bye'"
    assert json_field({"a": {"b": 1}}, "a.b") == 1 and json_field({}, "a.b") is None
    assert curl_cmd(5) == "curl -sS --max-time 5 -w '\n__SHIPFAB_STATUS__ %{http_code}' --config -"
    assert curl_config('http://h/x?a="b"') == 'url = "http://h/x?a=\\"b\\""\n'  # the URL on stdin, curl-quoted
    assert parse_curl("ok body\n__SHIPFAB_STATUS__ 200") == (200, "ok body")
    assert parse_curl("\n__SHIPFAB_STATUS__ 000") == (None, "")


def test_redactor_and_table():
    r = Redactor(["s3cr3t-value", "ab"])  # too-short values are not masked
    assert r("pw=s3cr3t-value ab") == "pw=******** ab"
    assert table(["a", "bb"], [[1, 2]]) == "a  bb\n-  --\n1  2"


def test_exit_code_priority_puts_manual_action_first():
    assert EXIT_PRIORITY[0] == 2


def test_preflight_binaries_and_evaluate():
    from dataclasses import replace

    from fabfile.steps import preflight

    a = app("supervisor")
    a = replace(a, preflight=replace(a.preflight, nginx=True, required_env=("API_KEY", "SECRET", "OTHER")))
    assert preflight.required_binaries(a) == ["tar", "pgrep", "python3", "supervisorctl", "nginx"]
    facts = preflight.parse_facts(
        "df 1000000 50000\nmem 1048576\nbin tar /usr/bin/tar\nbin nginx -\npyver 3.11.7\nenv present\n"
        "envkey API_KEY set\nenvkey SECRET empty\n"
        'lock held {"user":"ann","controller":"lt","pid":3,"since":"S","ref":"v2"}\n'
        "current /srv/app/releases/R7 0123456789abcdef\nnginx_t fail nginx: [emerg] unknown directive \"x\"\n"
    )
    checks = {c.name: (c.ok, c.detail) for c in preflight.evaluate(a, facts, "3")}
    assert checks["disk"] == (False, "0.0 GiB free (5 %); need 10 % and 1024 MiB")
    assert checks["memory"] == (True, "1024 MiB available; need 128 MiB")
    assert checks["binaries"] == (False, "missing: nginx")
    assert checks["python"] == (True, "python3 3.11.7; need >= 3.8")
    assert checks["nginx -t"] == (False, 'nginx: [emerg] unknown directive "x"')
    assert checks["env keys"] == (False, "missing: OTHER; empty: SECRET")
    assert checks["lock"] == (False, "held by ann@lt (pid 3) since S, deploying 'v2'")
    assert checks["release"] == (True, "R7 at 0123456789ab; target ref is 3 commit(s) ahead")


def test_preflight_facts_script_runs_read_only(tmp_path):
    """The facts script is plain sh: run it for real on this machine against a small tree."""
    from fabfile.steps import preflight

    root = tmp_path / "app"
    (root / "shared").mkdir(parents=True)
    (root / "shared" / ".env").write_text('export API_KEY=abc\nEMPTY=""\n# comment\nSPACED = "x y"\n')
    a = app()
    from dataclasses import replace

    a = replace(a, deploy_to=str(root))
    before = sorted(p.name for p in root.rglob("*"))
    out = subprocess.run(["sh", "-c", preflight.facts_cmd(a, Layout(str(root)))], capture_output=True, text=True).stdout
    facts = preflight.parse_facts(out)
    assert sorted(facts["envkey"]) == ["API_KEY set", "EMPTY empty", "SPACED set"]
    assert "abc" not in out and "x y" not in out  # values never leave the host
    assert facts["lock"] == ["free"] and facts["pyver"][0].split()[0].count(".") == 2
    # the whole sys.version comes along, for pip_sync's hash
    version = subprocess.run(["python3", "-c", "import sys; print(sys.version)"], capture_output=True, text=True).stdout
    assert preflight.python_version(out) == version.rstrip("\n")
    assert sorted(p.name for p in root.rglob("*")) == before


def test_restart_failure_names_gunicorns_own_error_not_the_script():
    from fabfile.managers.gunicorn import failure_message

    log = ("gunicorn is not serving release R2: master=none, 0 workers\n[ERROR] Exception in worker process\n"
           "Traceback (most recent call last):\n  File \"app.py\", line 1\nModuleNotFoundError: No module named 'nope'\n")
    msg = failure_message("web1", "R2", log)
    assert msg.startswith("web1: gunicorn did not serve release R2: ModuleNotFoundError: No module named 'nope'\n")
    assert "alive()" not in msg and "pid_of" not in msg  # never the shell script


def test_undo_notes_follow_the_reason_on_their_own_line_after_an_output_tail() -> None:
    assert with_notes("nothing went live. web1: boot check failed", ["note A."]) == \
        "nothing went live. web1: boot check failed note A."
    tail = "nothing went live. migrate failed; its last lines:\nTraceback\nRuntimeError: boom"
    assert with_notes(tail, ["The database was restored.", "B."]) == tail + "\nThe database was restored.\nB."
    assert with_notes("x", []) == "x"
