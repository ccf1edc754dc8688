"""Operator safety and experience, end to end over real sshd: pre-flight checks, secrets
never shown, host keys, webhooks (a real local HTTP server), output modes, exit codes,
history."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .services import Sshd, SshKeys, free_port, make_ssh_keys

pytestmark = pytest.mark.integration


def ok(res) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


class Webhook:
    """A real HTTP server on loopback that records every JSON body POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[dict] = []
        received, answer = self.received, status

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(answer)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0KEN-abcdef123456"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [m["shipfab"]["event"] for m in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def test_check_passes_then_fails_and_blocks_the_deploy(world):
    world.extra_toml = '[apps.sample.preflight]\nrequired_env = ["GOOGLE_GEMINI_API_KEY", "SECRET_KEY"]\n'
    host = world.add_host("web1", manager="supervisor")
    (world.tmp / "good.env").write_text("GOOGLE_GEMINI_API_KEY=gm-1234567890\nSECRET_KEY=sk-abcdefghij\n")
    (world.tmp / "half.env").write_text('GOOGLE_GEMINI_API_KEY=""\n')

    ok(world.fab("-H", "web1", "env.push", "good.env"))
    out = ok(world.fab("-H", "web1", "check"))
    for name in ("ssh", "disk", "memory", "binaries", "python", "env keys", "lock", "release"):
        assert f"\n{name} " in "\n" + out, name
    assert "all set: GOOGLE_GEMINI_API_KEY, SECRET_KEY" in out and "supervisorctl" in out
    assert "gm-1234567890" not in out and "sk-abcdefghij" not in out

    ok(world.fab("-H", "web1", "env.push", "half.env"))
    res = world.fab("-H", "web1", "check")
    assert res.returncode == 4, res.stdout
    assert "missing: SECRET_KEY; empty: GOOGLE_GEMINI_API_KEY" in res.stdout
    res = world.fab("-H", "web1", "deploy", "--ref", "v1")
    assert res.returncode == 4 and "pre-flight failed, nothing changed" in res.stdout
    assert host.releases() == [] and not host.lock_held()

    # --skip-checks bypasses them, and the release log says so
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1", "--skip-checks"))
    assert host.log()[-1]["preflight"] == "skipped (--skip-checks)"

    # a held lock and a disk threshold that cannot be met are reported too
    ok(world.fab("-H", "web1", "lock"))
    world.extra_toml = "[apps.sample.preflight]\nmin_disk_percent = 100\n"
    world.write()
    res = world.fab("-H", "web1", "check", "--json", str(world.tmp / "check.json"))
    assert res.returncode == 4
    assert "held by" in res.stdout and "need 100 %" in res.stdout
    data = json.loads((world.tmp / "check.json").read_text())
    failed = {c["check"] for c in data["hosts"][0]["checks"] if not c["ok"]}
    assert failed == {"disk", "lock"} and data["exit_code"] == 4


def test_nginx_t_is_checked_when_the_app_has_nginx(world):
    host = world.add_host("web1", manager="pidfile", nginx=True)
    world.extra_toml = f'[apps.sample.preflight]\nnginx = true\nnginx_conf = "{host.nginx.conf}"\n'
    world.write()
    out = ok(world.fab("-H", "web1", "check"))
    assert "nginx -t  web1  ok      configuration ok" in out and "nginx" in out.split("binaries")[1].split("\n")[0]
    # a broken configuration (the fixture's own nginx, not the machine's) fails the check with nginx's error
    host.nginx.conf.write_text(host.nginx.conf.read_text() + "\nthis is not nginx syntax;\n")
    res = world.fab("-H", "web1", "check")
    assert res.returncode == 4 and "nginx -t  web1  FAIL" in res.stdout and "unknown directive" in res.stdout


def test_no_secret_appears_in_any_output_or_log(world, webhook):
    db_password = "pg-P4ssw0rd-xyz"
    token = "xoxb-super-secret-token"
    world.extra_toml = f'[apps.sample.notify]\nwebhooks = [{{ secret = "{webhook.url}" }}]\n'
    world.add_host("web1", manager="supervisor")
    env_values = {
        "DATABASE_URL": f"postgresql://app:{db_password}@127.0.0.1:5432/app",
        "SECRET_KEY": "flask-secret-0123456789",
        "API_TOKEN": token,
    }
    (world.tmp / "prod.env").write_text("".join(f"{k}={v}\n" for k, v in env_values.items()))
    (world.tmp / ".env").write_text("LOCAL_ONLY_SECRET=local-secret-98765\n")  # the controller's own .env
    secrets = [*env_values.values(), db_password, "local-secret-98765", "T0KEN-abcdef123456"]

    outputs = [world.fab("-H", "web1", "env.push", "prod.env")]
    outputs.append(world.fab("-H", "web1", "deploy", "--ref", "v1", "-v", "--json", str(world.tmp / "d1.json")))
    # the broken release prints DATABASE_URL in its health body: the failure message must mask it
    outputs.append(world.fab("-H", "web1", "deploy", "--ref", "broken", "-v", "--json", str(world.tmp / "d2.json")))
    assert outputs[-1].returncode == 1
    # DATABASE_URL is not a secret as a whole (ordinary settings stay readable); its password is
    assert "cannot connect to postgresql://app:********@127.0.0.1:5432/app" in outputs[-1].stdout
    outputs.append(world.fab("-H", "web1", "releases"))
    outputs.append(world.fab("-H", "web1", "check", "-j", str(world.tmp / "c.json")))
    outputs.append(world.fab("-H", "web1", "env.diff", "prod.env"))

    texts = [o.stdout + o.stderr for o in outputs]
    texts += [(world.tmp / n).read_text() for n in ("d1.json", "d2.json", "c.json")]
    texts += [(world.hosts["web1"].deploy_to / ".shipfab" / "releases.jsonl").read_text()]
    texts += [json.dumps(m) for m in webhook.received]
    assert webhook.received, "the webhook got the deploy events"
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert (world.hosts["web1"].deploy_to / "shared" / ".env").stat().st_mode & 0o777 == 0o600


def test_env_push_diff_validation_and_previous_copy(world):
    host = world.add_host("web1", manager="pidfile")
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    (world.tmp / "a.env").write_text("A=1111\nB=2222\n")
    (world.tmp / "b.env").write_text("B=3333\nC=4444\n")
    (world.tmp / "bad.env").write_text("A=1\nthis line is broken\n")
    ok(world.fab("-H", "web1", "env.push", "a.env"))
    out = ok(world.fab("-H", "web1", "env.diff", "b.env"))
    assert "added: C; removed: A; changed: B" in out and "3333" not in out
    res = world.fab("-H", "web1", "env.push", "bad.env")
    assert res.returncode == 64 and "bad.env: line 2: cannot parse" in res.stderr
    out = ok(world.fab("-H", "web1", "env.push", "b.env", "--restart"))
    assert "reload, 2 workers" in out
    shared = host.deploy_to / "shared"
    assert (shared / ".env").read_text() == "B=3333\nC=4444\n"
    assert (shared / ".env.previous").read_text() == "A=1111\nB=2222\n"
    assert (shared / ".env").stat().st_mode & 0o777 == 0o600
    # FILE defaults to .env (README: `env.push [FILE]`, `env.diff [FILE]`)
    (world.tmp / ".env").write_text("B=3333\nD=5555\n")
    out = ok(world.fab("-H", "web1", "env.diff"))
    assert "added: D; removed: C" in out and "5555" not in out
    ok(world.fab("-H", "web1", "env.push"))
    assert (shared / ".env").read_text() == "B=3333\nD=5555\n"


def test_host_keys_unknown_then_trusted_then_changed(world):
    host = world.add_host("web1", manager="pidfile")
    known = world.tmp / "known_hosts"
    known.write_text("")
    res = world.fab("-H", "web1", "releases")
    text = res.stdout + res.stderr
    assert res.returncode != 0 and "unknown host key" in text and "SHA256:" in text and "fab -H web1 trust" in text

    out = ok(world.fab("-H", "web1", "trust"))
    assert "trusted [127.0.0.1]:" in out and "SHA256:" in out
    assert f"[127.0.0.1]:{host.sshd.port} ssh-ed25519 " in known.read_text()
    ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))

    # the same port now answers with another host key: refused, and trust refuses too
    port = host.sshd.port
    host.sshd.stop()
    new_keys = make_ssh_keys(world.tmp / "keys2")
    keys = SshKeys(world.keys.client_key, world.keys.client_pub, new_keys.host_key)
    host.sshd = Sshd.start(world.tmp / "sshd-web1-b", keys, port=port)
    res = world.fab("-H", "web1", "deploy", "--ref", "v2")
    assert res.returncode != 0 and "CHANGED" in res.stdout + res.stderr
    res = world.fab("-H", "web1", "trust")
    assert res.returncode != 0 and "CHANGED" in res.stdout
    assert host.health()["version"] == "v1"


def test_webhooks_on_start_success_failure_rollback(world, webhook):
    world.extra_toml = f'[apps.sample.notify]\nwebhooks = ["{webhook.url}", "http://127.0.0.1:{free_port()}/down"]\n'
    world.add_host("web1", manager="supervisor")
    out = ok(world.fab("-H", "web1", "deploy", "--ref", "v1"))
    assert "warning: webhook failed for the start notification" in out  # the dead one warns, never fails
    ok(world.fab("-H", "web1", "deploy", "--ref", "v2"))
    res = world.fab("-H", "web1", "deploy", "--ref", "broken")
    assert res.returncode == 1
    ok(world.fab("-H", "web1", "rollback"))
    assert webhook.events() == ["start", "success", "start", "success", "start", "failure", "rollback"]
    success = webhook.received[1]
    assert success["text"].startswith(":white_check_mark: shipfab success: sample")
    fields = success["shipfab"]
    assert fields["app"] == "sample" and fields["hosts"] == ["web1"] and len(fields["revision"]) == 40
    assert fields["user"] and fields["duration"] > 0 and fields["release"]
    failure = webhook.received[5]["shipfab"]
    assert failure["failed_step"] == "boot_check" and "500" in failure["reason"]  # caught before it went live
    assert "failed at boot_check" in webhook.received[5]["text"]


def test_output_modes_json_and_exit_codes(world):
    world.add_host("web1", manager="pidfile")
    quiet = ok(world.fab("-H", "web1", "deploy", "--ref", "v1", "-q"))
    assert "deploy_code" not in quiet and "deploy: ok" in quiet
    verbose = ok(world.fab("-H", "web1", "deploy", "--ref", "v2", "-v", "--json", str(world.tmp / "s.json")))
    assert "[web1] $ " in verbose and "[web1] pip_sync        ok" in verbose
    data = json.loads((world.tmp / "s.json").read_text())
    assert data["exit_code"] == 0 and data["hosts"][0]["status"] == "success"
    assert set(data["hosts"][0]["timings"]) >= {"lock", "deploy_code", "boot_check", "restart_gunicorn", "health_check"}
    # exit codes: 1 rolled back, 3 lock held, 64 usage (2 is in test_deploy.py, 4 in test_check_...)
    assert world.fab("-H", "web1", "deploy", "--ref", "broken").returncode == 1
    ok(world.fab("-H", "web1", "lock"))
    assert world.fab("-H", "web1", "deploy", "--ref", "v1", "--skip-checks").returncode == 3  # the lock step
    res = world.fab("-H", "web1", "deploy", "--ref", "v1")  # the pre-flight sees the lock first: same answer
    assert res.returncode == 3 and "deploy lock is held by" in res.stdout
    ok(world.fab("-H", "web1", "unlock"))
    assert world.fab("-H", "web1", "deploy", "--ref", "no-such-ref").returncode == 64


def test_history_flags_hosts_on_another_release(world):
    world.add_host("web1", manager="pidfile")
    world.add_host("web2", manager="pidfile")
    world.groups["prod"] = ["web1", "web2"]
    world.write()
    ok(world.fab("-H", "prod", "deploy", "--ref", "v1"))
    ok(world.fab("-H", "web2", "deploy", "--ref", "v2"))
    world.add_host("web3", manager="pidfile")
    world.groups["prod"] = ["web1", "web2", "web3"]
    world.write()
    ok(world.fab("-H", "web3", "deploy", "--ref", "v1"))
    out = ok(world.fab("-H", "prod", "history"))
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("web")}
    assert "DIFFERS" in lines["web2"] and "DIFFERS" not in lines["web1"] and "DIFFERS" not in lines["web3"]
