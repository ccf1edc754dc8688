"""Pure command builders: exact strings, no SSH (Kamal-style)."""

import subprocess
from datetime import UTC, datetime

import pytest

from fabfile.flow import EXIT_PRIORITY
from fabfile.inventory import parse_inventory
from fabfile.layout import Layout
from fabfile.output import Redactor, table
from fabfile.release import new_release_id
from fabfile.steps import lock, prune, release_log
from fabfile.steps.deploy_code import archive_spec, extract_cmd, link_shared_cmd, mirror_extract_cmd, mirror_update_cmd
from fabfile.steps.health_check import curl_cmd, evaluate, json_field, parse_curl
from fabfile.steps.host_state import HostState, parse_state, state_cmd
from fabfile.steps.pip_sync import parse_sync, sync_script
from fabfile.steps.restart_gunicorn import gunicorn_argv, manager_cmds, restart_script
from fabfile.steps.rollback import rollback_target
from fabfile.steps.switch_release import switch_cmd

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
    owner = {"user": "ann", "controller": "laptop", "pid": 7, "since": "2026-11-23T10:00:00Z", "ref": "v1"}
    assert lock.acquire_cmd(L, owner) == (
        "mkdir -p '/srv/my app/.shipfab' && if mkdir '/srv/my app/.shipfab/lock' 2>/dev/null; then printf '%s\\n' "
        "'{\"controller\": \"laptop\", \"pid\": 7, \"ref\": \"v1\", \"since\": \"2026-11-23T10:00:00Z\", \"user\": \"ann\"}'"
        " > '/srv/my app/.shipfab/lock/owner.json' && echo ACQUIRED; else echo HELD; "
        "cat '/srv/my app/.shipfab/lock/owner.json' 2>/dev/null; fi"
    )
    assert lock.release_cmd(L) == "rm -rf '/srv/my app/.shipfab/lock'"
    assert lock.describe_holder('{"user":"ann","controller":"laptop","pid":7,"since":"S","ref":"v1"}') == (
        "ann@laptop (pid 7) since S, deploying 'v1'"
    )
    assert "unknown holder" in lock.describe_holder("garbage")


def test_deploy_code_commands():
    assert archive_spec("abc", "") == "abc" and archive_spec("abc", "examples/app") == "abc:examples/app"
    assert extract_cmd(L, "R1", "/tmp/u.tgz") == (
        "mkdir -p '/srv/my app/releases/R1' && tar -xzf /tmp/u.tgz -C '/srv/my app/releases/R1' && rm -f /tmp/u.tgz"
    )
    assert mirror_update_cmd(L, "git@host:team/app.git", "v1;rm") == (
        "if [ -d '/srv/my app/repo' ]; then git -C '/srv/my app/repo' remote update --prune >/dev/null; "
        "else git clone --quiet --mirror git@host:team/app.git '/srv/my app/repo'; fi && "
        "git -C '/srv/my app/repo' rev-parse --verify 'v1;rm^{commit}'"
    )
    assert mirror_extract_cmd(L, "R1", "abc", "sub") == (
        "mkdir -p '/srv/my app/releases/R1' && git -C '/srv/my app/repo' archive abc:sub | tar -x -C '/srv/my app/releases/R1'"
    )
    assert link_shared_cmd(L, "R1", "abc", (".env",), ("logs",)) == (
        "printf '%s\\n' abc > '/srv/my app/releases/R1/REVISION' && "
        "mkdir -p '/srv/my app/shared/logs' && rm -rf '/srv/my app/releases/R1/logs' && "
        "mkdir -p \"$(dirname '/srv/my app/releases/R1/logs')\" && ln -s '/srv/my app/shared/logs' '/srv/my app/releases/R1/logs'"
        " && mkdir -p \"$(dirname '/srv/my app/shared/.env')\" && { [ -e '/srv/my app/shared/.env' ] || "
        "(umask 077 && : > '/srv/my app/shared/.env'); } && rm -rf '/srv/my app/releases/R1/.env' && "
        "mkdir -p \"$(dirname '/srv/my app/releases/R1/.env')\" && ln -s '/srv/my app/shared/.env' '/srv/my app/releases/R1/.env'"
    )


def test_pip_sync_script_and_parse():
    script = sync_script(L, "R1", "python3", "/srv/wheels")
    assert script.startswith(
        "h=$({ cat '/srv/my app/releases/R1/requirements.txt' 2>/dev/null; python3 -c 'import sys; print(sys.version)'; "
        "echo /srv/wheels; } | sha256sum | cut -c1-16) && v='/srv/my app/venvs'/$h && "
    )
    assert "--no-index --find-links /srv/wheels -r '/srv/my app/releases/R1/requirements.txt'" in script
    assert script.endswith("ln -sfn \"$v\" '/srv/my app/releases/R1/.venv'")
    assert "--no-index" not in sync_script(L, "R1", "python3", "")
    assert parse_sync("REUSED 0123456789abcdef\n") == ("0123456789abcdef", False)
    assert parse_sync("noise\nBUILT fedcba9876543210\n") == ("fedcba9876543210", True)


def test_gunicorn_argv_runs_through_current():
    a = app(bind="127.0.0.1:9000", workers=3)
    assert gunicorn_argv(a, L) == [
        "/srv/my app/current/.venv/bin/python", "/srv/my app/current/.venv/bin/gunicorn",
        "--chdir", "/srv/my app/current", "--bind", "127.0.0.1:9000", "--workers", "3", "--timeout", "30",
        "--pid", "/srv/my app/shared/gunicorn.pid", "--error-logfile", "/srv/my app/shared/gunicorn.log",
        "--control-socket", "/srv/my app/shared/gunicorn.ctl", "app:app",
    ]
    assert "--control-socket" not in gunicorn_argv(app(control_socket=False), L)


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


NEW_MASTER = {
    "pidfile": 'kill -USR2 "$pid" && old=$pid || exit 1; echo ACTION upgrade',
    "supervisor": "supervisorctl restart web >/dev/null || exit 1; echo ACTION restart",
    "systemd": "systemctl restart web || exit 1; echo ACTION restart",
}


@pytest.mark.parametrize("manager", sorted(NEW_MASTER))
def test_restart_script_is_valid_shell_and_picks_new_master_by_manager(manager):
    script = restart_script(app(manager), L, "R1")
    for shell in ("bash", "sh"):
        assert subprocess.run([shell, "-n", "-c", script]).returncode == 0
    assert f'elif [ "$venv" != "$ran" ]; then\n  {NEW_MASTER[manager]}\n' in script
    assert "elif [ 0 = 1 ]" in script and "elif [ 1 = 1 ]" in restart_script(app(manager), L, "R1", full=True)


def test_pip_and_state_scripts_are_valid_shell():
    for script in (sync_script(L, "R1", "python3", ""), prune.prune_cmd(L, ["R0"]), state_cmd(L)):
        assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0


def test_host_state_and_previous():
    state = parse_state("releases/R3\n---\nR1\nR3\nR2\n")
    assert state == HostState(current="R3", releases=("R1", "R2", "R3"))
    assert state.previous_of("R3") == "R2" and state.previous_of("R1") == ""
    assert parse_state("---\n") == HostState(current="", releases=())


def test_prune_keeps_newest_current_and_previous():
    state = HostState(current="R2", releases=("R1", "R2", "R3", "R4", "R5", "R6"))
    assert prune.releases_to_prune(state, keep=2) == ["R3", "R4"]  # R1 previous, R2 current, R5 R6 newest
    assert prune.prune_cmd(L, ["R3"]).startswith("rm -rf -- '/srv/my app/releases/R3' && if [ -d '/srv/my app/venvs' ]")
    assert prune.prune_cmd(L, []).startswith("if [ -d")


def test_rollback_target():
    state = HostState(current="R3", releases=("R1", "R2", "R3", "R4"))
    assert rollback_target(state, None, "h") == "R2"
    assert rollback_target(state, "R4", "h") == "R4"
    with pytest.raises(Exception, match="unknown release 'R9'; valid ids: R1, R2, R4"):
        rollback_target(state, "R9", "h")
    with pytest.raises(Exception, match="already the current"):
        rollback_target(state, "R3", "h")
    with pytest.raises(Exception, match="no release older"):
        rollback_target(HostState(current="R1", releases=("R1",)), None, "h")


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
    assert release_log.fold(text) == [{"release": "R1", "status": "success"},
                                      {"release": "R2", "status": "rolled_back", "ref": "v2"}]


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
    assert curl_cmd("http://127.0.0.1:8000/h", 5) == \
        "curl -sS --max-time 5 -w '\n__SHIPFAB_STATUS__ %{http_code}' http://127.0.0.1:8000/h"
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
    assert facts["lock"] == ["free"] and facts["pyver"][0].count(".") == 2
    assert sorted(p.name for p in root.rglob("*")) == before
