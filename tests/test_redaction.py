"""One redaction rule: which values are secret, and every form of them masked.

Issue 12's leaks covered here: a URL-encoded password printed decoded; a value with `"`
or a non-ASCII character leaking JSON-escaped (masking after json.dumps); every .env value
masked, so that `FLASK_APP=wsgi.py` turned paths into `********`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from fabfile.inventory import parse_inventory
from fabfile.output import MASK, Printer, Redactor
from fabfile.secret_rule import env_secrets, is_secret_key, local_env, parse_env, secret_forms, url_passwords

from .conftest import REPO

TRICKY = 'p@ss w"rd\'s/\u00e9\u2603'  # quotes, a slash, a space, non-ASCII


def forms_of(value: str) -> dict[str, str]:
    return {
        "raw": value,
        "url-encoded": quote(value, safe=""),
        "url-encoded, / kept": quote(value),
        "url-encoded, + for space": quote_plus(value),
        "json": json.dumps(value)[1:-1],
        "json, not ascii": json.dumps(value, ensure_ascii=False)[1:-1],
        "python repr": repr(value)[1:-1],
        "shell-quoted": shlex.quote(value),
    }


@pytest.mark.parametrize("form", list(forms_of(TRICKY)))
def test_every_form_of_a_secret_is_masked(form):
    redact = Redactor([TRICKY])
    text = f"before {forms_of(TRICKY)[form]} after"
    assert redact(text) == f"before {MASK} after"


def test_url_encoded_password_is_masked_decoded_too():
    """DATABASE_URL holds `p%40ss`; libraries print `p@ss`."""
    redact = Redactor()
    redact.add_env({"DATABASE_URL": "postgresql://app:p%40ss-word@db/app"})
    for shown in ("p%40ss-word", "p@ss-word", "p%2540ss-word"):
        assert redact(f"FATAL: password {shown} rejected") == f"FATAL: password {MASK} rejected"


def test_password_of_a_url_is_masked_whatever_the_key():
    redact = Redactor()
    redact.add_env({"BROKER": "redis://:s3cr3t-pw@cache:6379/0", "UPSTREAM": "https://user:hunter22@example.com/x"})
    assert redact("redis://:s3cr3t-pw@cache:6379/0") == f"redis://:{MASK}@cache:6379/0"
    assert redact("login hunter22 failed") == f"login {MASK} failed"
    assert url_passwords("postgres://u:p@ss@h/db") == ["p@ss"]  # a raw @ in the password
    assert url_passwords("https://example.com/a@b") == []


def test_multi_line_secret_is_masked_line_by_line():
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEF\nAASCBKcwggSjAgEAAoIBAQC7\n-----END KEY-----"
    redact = Redactor([key])
    assert redact(json.dumps(key)) == f'"{MASK}"'
    assert "MIIEvQ" not in redact("stderr tail: AASCBKcwggSjAgEAAoIBAQC7\n-----END")
    assert "MIIEvQ" not in redact("MIIEvQIBADANBgkqhkiG9w0BAQEF")


def test_mask_data_masks_before_serializing():
    """json.dumps(redact-after) missed `"` and non-ASCII: mask_data works on the strings."""
    redact = Redactor([TRICKY])
    payload = {"text": f"failed: {TRICKY}", "shipfab": {"hosts": ["web1"], "reason": [f"x{TRICKY}y", 3, None]}}
    for ensure_ascii in (True, False):
        body = json.dumps(redact.mask_data(payload), ensure_ascii=ensure_ascii)
        assert all(form not in body for form in secret_forms(TRICKY)), body
        assert json.loads(body)["shipfab"]["reason"] == [f"x{MASK}y", 3, None]


def test_ordinary_settings_stay_readable():
    env = parse_env(
        "FLASK_APP=app.py\nPORT=8000\nDEBUG=0\nLOG_LEVEL=info\nSECRET_KEY=k3y-value\n"
        "api_token=tok-value\nAUTH_ENABLED=true\nSENTRY_DSN=https://abc123@o1.ingest.sentry.io/1\n"
    )
    assert sorted(env_secrets(env)) == ["https://abc123@o1.ingest.sentry.io/1", "k3y-value", "tok-value"]
    redact = Redactor()
    redact.add_env(env)
    line = "File releases/20260101/app.py, PORT=8000 DEBUG=0 level info, AUTH_ENABLED=true"
    assert redact(line) == line
    assert redact("key k3y-value token tok-value") == f"key {MASK} token {MASK}"


def test_short_values_and_boolean_words_are_not_secrets():
    assert env_secrets({"API_KEY": "abc", "USE_AUTH": "False", "TOKEN_TTL": "off"}) == ["abc"]
    assert Redactor(["abc"])("abc abcd") == "abc abcd"  # too short to mask without masking words


@pytest.mark.parametrize("key", ["SECRET_KEY", "DB_PASSWORD", "smtp_passwd", "GITHUB_TOKEN", "STRIPE_API_KEY",
                                 "AWS_CREDENTIALS", "BASIC_AUTH", "PRIVATE_PEM", "SENTRY_DSN", "TLS_CERT"])
def test_secret_key_names(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["FLASK_APP", "PORT", "DEBUG", "DATABASE_URL", "WEB_CONCURRENCY", "TZ"])
def test_ordinary_key_names(key):
    assert not is_secret_key(key)


def test_app_lists_mark_keys_secret_or_public(tmp_path):
    text = """
[apps.web]
stack = "gunicorn"
deploy_to = "/srv/web"
secret_keys = ["STRIPE_ACCOUNT"]
public_keys = ["PUBLIC_KEY_URL", "CONN"]
health = { url = "http://h/" }
[hosts.web1]
hostname = "h1"
"""
    app = parse_inventory(tomllib.loads(text), tmp_path / "hosts.toml").apps["web"]
    env = {"STRIPE_ACCOUNT": "acct_12345", "PUBLIC_KEY_URL": "https://cdn.example/key.pub",
           "CONN": "amqp://guest:rabbit-pw@mq/", "FLASK_APP": "app.py"}
    redact = Redactor()
    redact.add_env(env, app)
    shown = redact(" ".join(env.values()))
    assert shown == f"{MASK} https://cdn.example/key.pub amqp://guest:{MASK}@mq/ app.py"


def test_marked_values_and_url_passwords_in_hosts_toml_are_secrets(tmp_path):
    text = """
[apps.web]
stack = "gunicorn"
deploy_to = "/srv/web"
repo = "https://deploy:gh-token-123@git.example/web.git"
health = { url = "http://h/" }
notify = { webhooks = [{ secret = "https://hooks.slack.com/services/T0/B0/XyZ" }] }
[hosts.web1]
hostname = "h1"
"""
    inv = parse_inventory(tomllib.loads(text), tmp_path / "hosts.toml")
    assert inv.secrets == {"https://hooks.slack.com/services/T0/B0/XyZ", "gh-token-123"}
    assert inv.apps["web"].notify.webhooks == ("https://hooks.slack.com/services/T0/B0/XyZ",)


def test_printer_masks_every_line(capsys):
    printer = Printer(Redactor([TRICKY]))
    printer.line(f"one {TRICKY}\ntwo {json.dumps(TRICKY)}", host="web1")
    out = capsys.readouterr().out
    assert out == f"[web1] one {MASK}\n[web1] two \"{MASK}\"\n"


def test_local_env_is_parsed_not_evaluated(tmp_path):
    env = tmp_path / ".env"
    env.write_text("A=\"$(touch {0})\"\nB=`touch {0}`\nC='$HOME'\n".format(tmp_path / "pwned"))
    values = local_env(Path(env))
    assert values == {"A": f"$(touch {tmp_path / 'pwned'})", "B": f"`touch {tmp_path / 'pwned'}`", "C": "$HOME"}
    assert not (tmp_path / "pwned").exists()


INV = [sys.executable, "-c", "import sys; from invoke.main import program; sys.exit(program.run())"]
DB_PASSWORD = "p@ss-w\u00f6rd"


def test_inv_health_target_masks_the_hosts_env_secrets(world):
    """`inv health prod` (a positional TARGET) reads each host's .env before printing: the
    DATABASE_URL password the unhealthy app prints is masked, the rest of the URL is not."""
    host = world.add_host("web1")
    world.groups["prod"] = ["web1"]
    world.write()
    assert world.fab("-H", "web1", "deploy").returncode == 0
    url = f"postgresql://app:{quote(DB_PASSWORD, safe='')}@db.internal/app"
    (host.deploy_to / "shared" / ".env").write_text(f"FLASK_APP=app.py\nDATABASE_URL={url}\nSECRET_KEY=k3y-{DB_PASSWORD}\n")
    (host.deploy_to / "current" / "HEALTHY").write_text("0\n")  # the app now prints DATABASE_URL in its error
    assert host.supervisord is not None and host.supervisord.ctl("restart", "app").returncode == 0

    res = subprocess.run([*INV, "-r", str(REPO), "health", "prod"], capture_output=True, text=True, cwd=world.tmp,
                         env={**os.environ, "SHIPFAB_HOSTS": str(world.inventory)}, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "UNHEALTHY" in out, out
    assert f"postgresql://app:{MASK}@db.internal/app" in out, out
    assert not any(form in out for form in secret_forms(DB_PASSWORD) | secret_forms(quote(DB_PASSWORD, safe=""))), out
