"""Issue 12, item 6: the secrets test matrix, end to end through the real CLI over real sshd.

Known secret values of every form are planted where secrets live: the remote shared/.env
(pushed with `fab env.push`), the controller's .env (the fab cwd) and hosts.toml
(`{ secret = ... }` values, a key listed in `secret_keys`). The app and the migration
command then print them, as real ones do: the migration prints every planted value in
several forms, the `broken` release prints DATABASE_URL in its /health body, and the
`leaky` release prints the quoted, non-ASCII, URL-decoded and multi-line values there, and
the health URL (a secret: it carries a signature) is probed by the boot check and by curl
on the host.

One scenario runs every task (deploy -v --json good and failing, rollback, each step task,
check, releases, history, env.diff, `inv health`) while a thread snapshots `ps -ww -eo args`.
The tests then assert that no form of any secret appears in stdout, stderr, the JSON files,
the release log, the webhook bodies or on any command line, and that ordinary settings
(FLASK_APP=app.py, PORT=8000, DEBUG=0, a key listed in `public_keys`) stay readable.

Every secret carries unique alphanumeric markers at both ends and inside: they survive every
encoding (URL, JSON, repr, shell quoting), so finding one also catches a secret cut in half.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus, unquote

import pytest

from .conftest import World, git, inv_health
from .test_operator import Webhook

pytestmark = pytest.mark.integration

# name -> (value as the app reads it, its unique markers)
DB_PASSWORD = "p%40ss-dbpwM4rk7Ra-dbpwM4rk7Zz"  # URL-encoded in DATABASE_URL; libraries print p@ss-...
REMOTE = {
    "SECRET_KEY": ("rawM4rk1Aa-secret-value-rawM4rk1Zz", ["rawM4rk1Aa", "rawM4rk1Zz"]),
    "API_TOKEN": ('tokM4rk2Aa-"quoted" caf\u00e9 \u2603-tokM4rk2Zz', ["tokM4rk2Aa", "tokM4rk2Zz"]),
    "DATABASE_URL": (f"postgresql://app:{DB_PASSWORD}@127.0.0.1:5432/app", ["dbpwM4rk7Ra", "dbpwM4rk7Zz"]),
    "PRIVATE_PEM": ("-----BEGIN TEST KEY-----\npemM4rk3Aa-first-line-of-key\npemM4rk3Mm-second-line-of-key\n"
                    "-----END TEST KEY-----", ["pemM4rk3Aa", "pemM4rk3Mm"]),
    "PLAIN_LOOKING": ("plainM4rk4Aa-listed-in-secret-keys", ["plainM4rk4Aa"]),  # secret_keys
}
LOCAL = {"LOCAL_DEPLOY_TOKEN": ("localM4rk5Aa-controller-only-localM4rk5Zz", ["localM4rk5Aa", "localM4rk5Zz"])}
HEALTH_SIG = "sigM4rk6Aa-health-signature"  # the health URL, written { secret = ... } in hosts.toml
# Ordinary settings, printed by the migration: they must stay readable.
ORDINARY = {"FLASK_APP": "app.py", "PORT": "8000", "DEBUG": "0", "PUBLIC_KEY_ID": "pub-key-id-readable-1234"}


def dotenv_line(key: str, value: str) -> str:
    """KEY="value" as python-dotenv reads it back exactly (double quotes: \\" and \\\\ escapes)."""
    return f'{key}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"\n'


# The migration prints every value it gets, raw, JSON-escaped and as repr, and the decoded
# DATABASE_URL; it also creates the SQLite database so backup-db has something to snapshot.
SHOWN = [*REMOTE, *ORDINARY]
MIGRATE = (
    "python -c 'import json, os, sqlite3, urllib.parse as u\n"
    'sqlite3.connect("data/app.db").execute("create table if not exists t (x)")\n'
    f"for k in {json.dumps(SHOWN)}:\n"
    '    v = os.environ.get(k, "")\n'
    '    print(f"{k}={v}"); print(json.dumps(v)); print(repr(v))\n'
    'print("decoded", u.unquote(os.environ["DATABASE_URL"]))\''
)
# The leaky release's /health error: the values whose forms are hardest to mask, then more.
LEAKY_ERROR = (
    'f"cannot connect: {os.environ.get(\'API_TOKEN\')} {urllib.parse.unquote(os.environ.get(\'DATABASE_URL\', \'\'))} '
    '{os.environ.get(\'PRIVATE_PEM\')} {os.environ.get(\'SECRET_KEY\')}"'
)


def forms(value: str) -> set[str]:
    """The forms the issue names (raw, URL-decoded, URL-encoded, JSON-escaped, shell-quoted),
    for the whole value and each line of a multi-line one."""
    bases = {value, unquote(value)}
    bases |= {line for base in list(bases) for line in base.splitlines() if "M4rk" in line}
    found: set[str] = set()
    for b in bases:
        found |= {b, quote(b, safe=""), quote(b), quote_plus(b), json.dumps(b)[1:-1],
                  json.dumps(b, ensure_ascii=False)[1:-1], shlex.quote(b)}
    return found


def secret_values(webhook_url: str, health_url: str) -> list[str]:
    values = [v for v, _ in (*REMOTE.values(), *LOCAL.values())]
    return [*values, DB_PASSWORD, unquote(DB_PASSWORD), webhook_url, health_url]


MARKERS = [m for _, marks in (*REMOTE.values(), *LOCAL.values()) for m in marks] + ["sigM4rk6Aa", "T0KEN-abcdef"]


@pytest.fixture(scope="module")
def leaky_repo(tmp_path_factory, app_repo) -> Path:
    """The app repo plus tag `leaky`: v2 whose /health fails and prints several secrets."""
    repo = tmp_path_factory.mktemp("secretsrepo") / "repo"
    shutil.copytree(app_repo, repo)
    git(repo, "checkout", "-q", "-b", "leak", "v2")
    app = (repo / "app.py").read_text()
    old = "f\"cannot connect to {os.environ.get('DATABASE_URL', 'the database')}\""
    assert old in app, "the sample app's leaking line changed: update LEAKY_ERROR"
    (repo / "app.py").write_text("import urllib.parse\n" + app.replace(old, LEAKY_ERROR))
    (repo / "VERSION").write_text("leaky\n")
    (repo / "HEALTHY").write_text("0\n")
    git(repo, "commit", "-qam", "leaky")
    git(repo, "tag", "leaky")
    git(repo, "checkout", "-q", "main")
    return repo


class PsWatch:
    """Snapshots `ps -ww -eo args` in a thread until stopped: every command line seen."""

    def __init__(self) -> None:
        self.lines: set[str] = set()
        self.snapshots = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, errors="replace").stdout
            self.lines.update(out.splitlines()[1:])
            self.snapshots += 1
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Capture:
    """Everything the scenario produced, by label."""

    texts: dict[str, str] = field(default_factory=dict)
    codes: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (expected, got)
    ps: PsWatch | None = None
    secrets: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, wheelhouse, leaky_repo) -> Iterator[Capture]:
    world = World(tmp_path_factory.mktemp("secrets"), wheelhouse, leaky_repo)
    hook = Webhook()
    cap = Capture()
    try:
        cap.texts.update(run_scenario(world, hook, cap))
        cap.texts.update({f"webhook {i}": json.dumps(body, ensure_ascii=False) for i, body in enumerate(hook.received)})
        yield cap
    finally:
        if cap.ps is not None:
            cap.ps.stop()
        hook.close()
        world.stop()


def run_scenario(world: World, hook: Webhook, cap: Capture) -> dict[str, str]:
    """Plant the secrets, run every task, return label -> captured text."""
    world.extra_app = {"shared_dirs": ["logs", "data"], "secret_keys": ["PLAIN_LOOKING"],
                       "public_keys": ["PUBLIC_KEY_ID"]}
    world.extra_toml = (f'[apps.sample.notify]\nwebhooks = [{{ secret = "{hook.url}" }}]\n'
                        f'[apps.sample.database]\nengine = "sqlite"\npath = "data/app.db"\nmigrate = {json.dumps(MIGRATE)}\n')
    host = world.add_host("web1", manager="supervisor")
    health_url = f"http://127.0.0.1:{host.port}/health?sig={HEALTH_SIG}"
    plain = f'health = {{ url = "http://127.0.0.1:{host.port}/health", via = "controller" }}'
    toml = world.inventory.read_text()
    assert plain in toml
    world.inventory.write_text(toml.replace(plain, f'health = {{ url = {{ secret = "{health_url}" }}, via = "host" }}'))
    cap.secrets = secret_values(hook.url, health_url)

    (world.tmp / "prod.env").write_text("".join(dotenv_line(k, v) for k, (v, _) in REMOTE.items())
                                        + "".join(f"{k}={v}\n" for k, v in ORDINARY.items()))
    (world.tmp / ".env").write_text("".join(dotenv_line(k, v) for k, (v, _) in LOCAL.items()) + "FLASK_APP=app.py\n")

    cap.ps = PsWatch()
    texts: dict[str, str] = {}

    def fab(label: str, expected: int, *args: str) -> str:
        res = world.fab("-H", "web1", *args)
        cap.codes[label] = (expected, res.returncode)
        texts[f"{label} stdout"], texts[f"{label} stderr"] = res.stdout, res.stderr
        return res.stdout

    fab("env.push", 0, "env.push", "prod.env")
    fab("deploy v1", 0, "deploy", "--ref", "v1")
    fab("deploy v2 -v --json", 0, "deploy", "--ref", "v2", "-v", "--json", str(world.tmp / "good.json"))
    fab("deploy broken", 1, "deploy", "--ref", "broken", "-v", "--json", str(world.tmp / "broken.json"))
    fab("deploy leaky", 1, "deploy", "--ref", "leaky", "--json", str(world.tmp / "leaky.json"))
    fab("rollback", 0, "rollback", "-v", "--json", str(world.tmp / "rollback.json"))
    fab("deploy-code", 0, "deploy-code", "--ref", "v2", "--verbose")
    new = host.releases()[-1]
    fab("pip-sync", 0, "pip-sync", "--verbose")
    fab("backup-db", 0, "backup-db", "--verbose")
    fab("migrate", 0, "migrate", "--release", new, "--verbose")
    fab("switch-release", 0, "switch-release", "--to", new, "--verbose")
    fab("restart-gunicorn", 0, "restart-gunicorn", "--verbose")
    fab("health-check", 0, "health-check", "--verbose")
    fab("check", 0, "check", "--json", str(world.tmp / "check.json"))
    fab("releases", 0, "releases")
    fab("history", 0, "history")
    fab("env.diff local", 0, "env.diff")
    fab("env.diff prod", 0, "env.diff", "prod.env")
    res = inv_health(world.inventory, world.tmp, "web1", timeout=120)
    cap.codes["inv health"] = (0, res.returncode)
    texts["inv health stdout"], texts["inv health stderr"] = res.stdout, res.stderr
    cap.ps.stop()

    for name in ("good", "broken", "leaky", "rollback", "check"):
        texts[f"{name}.json"] = (world.tmp / f"{name}.json").read_text()
    texts["releases.jsonl"] = (host.deploy_to / ".shipfab" / "releases.jsonl").read_text()
    return texts


def test_every_task_ran_as_expected(scenario):
    """The matrix means something only if each task really ran: exit codes, and the secrets reached output."""
    wrong = {label: got for label, (want, got) in scenario.codes.items() if want != got}
    assert not wrong, {label: (wrong[label], scenario.texts[f"{label} stdout"][-1500:],
                               scenario.texts[f"{label} stderr"][-1500:]) for label in wrong}
    assert scenario.ps.snapshots > 20
    assert [json.loads(t)["shipfab"]["event"] for k, t in scenario.texts.items() if k.startswith("webhook")] == [
        "start", "success", "start", "success", "start", "failure", "start", "failure", "rollback"]
    # the secrets were really printed (masked): by the migration, the health bodies and the health URL
    assert "SECRET_KEY=********" in scenario.texts["deploy v2 -v --json stdout"]
    assert "cannot connect: ********" in scenario.texts["deploy leaky stdout"]
    assert "cannot connect to postgresql://app:********@127.0.0.1:5432/app" in scenario.texts["deploy broken stdout"]
    # the health URL (a secret) reached the boot check and curl on the host through their stdin
    assert "imports and answers /health 200" in scenario.texts["deploy v2 -v --json stdout"]
    assert "$ curl -sS --max-time 5 -w" in scenario.texts["health-check stdout"]
    assert "healthy: status 200" in scenario.texts["health-check stdout"]
    assert "healthy" in scenario.texts["inv health stdout"]


@pytest.mark.parametrize("label", [
    "env.push", "deploy v1", "deploy v2 -v --json", "deploy broken", "deploy leaky", "rollback", "deploy-code",
    "pip-sync", "backup-db", "migrate", "switch-release", "restart-gunicorn", "health-check", "check", "releases",
    "history", "env.diff local", "env.diff prod", "inv health", "files", "webhooks"])
def test_no_form_of_any_secret_appears(scenario, label):
    if label == "files":
        texts = {k: v for k, v in scenario.texts.items() if k.endswith((".json", ".jsonl"))}
    elif label == "webhooks":
        texts = {k: v for k, v in scenario.texts.items() if k.startswith("webhook")}
    else:
        texts = {k: v for k, v in scenario.texts.items() if k in (f"{label} stdout", f"{label} stderr")}
    assert texts
    leaks = [(where, form) for where, text in texts.items() for secret in scenario.secrets for form in forms(secret)
             if form in text]
    leaks += [(where, marker) for where, text in texts.items() for marker in MARKERS if marker in text]
    assert not leaks, [(where, found, _around(texts[where], found)) for where, found in leaks]


def test_no_secret_on_any_command_line(scenario):
    lines = scenario.ps.lines
    leaks = [line for line in lines for marker in MARKERS if marker in line]
    leaks += [line for line in lines for secret in scenario.secrets for form in forms(secret) if form in line]
    assert not leaks
    assert any("sshd" in line for line in lines)


@pytest.mark.parametrize(("label", "readable"), [
    ("deploy v2 -v --json stdout", [f"{k}={v}" for k, v in ORDINARY.items()]),
    ("migrate stdout", [f"{k}={v}" for k, v in ORDINARY.items()]),
    ("deploy broken stdout", ["postgresql://app:********@127.0.0.1:5432/app"]),
    ("deploy v2 -v --json stdout", ["app.py"]),
])
def test_ordinary_settings_stay_readable(scenario, label, readable):
    text = scenario.texts[label]
    assert all(value in text for value in readable), [v for v in readable if v not in text]


def _around(text: str, found: str, width: int = 80) -> str:
    i = text.find(found)
    return text[max(0, i - width): i + len(found) + width]
