"""hosts.toml -> validated Target objects; -H alias/group expansion.

The inventory has four parts: top-level `default` (the target used when no -H is
given), `[defaults]` (connection settings for every host), `[apps.NAME]` (what is
deployed and how) and `[hosts.NAME]` / `[groups]` (where). Every error names the
file, the key path and what is wrong, on one line: no input (binary, another encoding,
deep nesting, nan/inf, huge numbers, wrong types) gives a traceback, and every number is
range-checked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import reprlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InventoryError
from .secret_rule import unwrap_marked

STACKS = ("gunicorn", "worker", "compose", "streamlit")
URL_HEALTH_STACKS = ("gunicorn",)  # stacks whose [health] url is required
MANAGERS = ("systemd", "supervisor", "pidfile")
ENGINES = ("postgresql", "sqlite")
HEALTH_VIA = ("controller", "host")

DEFAULT_PARALLEL = 10  # hosts of a fleet worked on at once
MAX_DEPTH = 32  # tables and arrays nested deeper than this are not an inventory
MAX_SHOWN = 60  # characters of a value quoted in a message
SANDBOX_PORT = "{sandbox_port}"  # in gunicorn.bind / health.url of a local host: a port of its own per sandbox
SANDBOX_PORT_RE = re.compile(r"\{sandbox_port(?:\+(\d{1,2}))?\}")  # {sandbox_port+1}: the next port (several instances)
SANDBOX_PORTS = (20000, 10000)  # first port, how many: below Linux's ephemeral range (32768-60999)

# Schema: key -> (type, default[, Range]). A default of REQUIRED means the key must be given.
REQUIRED = object()


@dataclass(frozen=True)
class Range:
    """The numbers a key accepts: finite, from `lo` (excluded when `above`) to `hi`."""

    lo: float
    hi: float
    above: bool = False
    why: str = ""

    def problem(self, value: float) -> str | None:
        """None when `value` is allowed, else what is wrong with it."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if (value > self.lo if self.above else value >= self.lo) and value <= self.hi:
            return None
        low = f"more than {self.lo:g}" if self.above else f"at least {self.lo:g}"
        why = f" ({self.why})" if self.why else ""
        return f"must be {low} and at most {self.hi:g}{why}, got {_show(value)}"


PORT = Range(1, 65535, why="a TCP port")
TIMEOUT = Range(0, 86400, above=True, why="seconds")
MEGABYTES = Range(0, 2**40)

GUNICORN_SCHEMA: dict[str, tuple[Any, ...]] = {
    "manager": (str, "pidfile"),
    "program": (str, ""),  # supervisor program / systemd unit name (default: the app name)
    "supervisor_conf": (str, ""),
    "sudo": (bool, False),
    "bind": (str, "127.0.0.1:8000"),
    "app_module": (str, "app:app"),
    "workers": (int, 2, Range(1, 256)),
    "timeout": (int, 30, TIMEOUT),
    "control_socket": (bool, True),  # gunicorn >= 25.1: socket under shared/; false for older gunicorn
    "restart_timeout": ((int, float), 60, TIMEOUT),
    "args": (list, []),
}

HEALTH_SCHEMA: dict[str, tuple[Any, ...]] = {
    "url": (str, ""),  # required by the gunicorn stack; other stacks probe their own endpoints
    "via": (str, "controller"),
    "status": (int, 200, Range(100, 599, why="an HTTP status")),
    "body": (str, ""),
    "json": (dict, {}),
    "timeout": ((int, float), 30, TIMEOUT),
    "request_timeout": ((int, float), 5, TIMEOUT),
}

PREFLIGHT_SCHEMA: dict[str, tuple[Any, ...]] = {
    "min_disk_percent": ((int, float), 10, Range(0, 100, why="percent")),
    "min_disk_mb": (int, 1024, MEGABYTES),
    "min_memory_mb": (int, 128, MEGABYTES),
    "python_min": (str, "3.8"),
    "nginx": (bool, False),  # the app sits behind nginx on this host: check the binary and `nginx -t`
    "nginx_conf": (str, ""),  # test this configuration file (`nginx -t -c FILE`) instead of nginx's default
    "required_env": (list, []),  # keys that must be present and non-empty in shared/.env
    "binaries": (list, []),  # more binaries the app needs on the host
}

NOTIFY_SCHEMA: dict[str, tuple[Any, ...]] = {
    "webhooks": (list, []),  # Slack-compatible incoming-webhook URLs
    "timeout": ((int, float), 3, TIMEOUT),
}

DATABASE_SCHEMA: dict[str, tuple[Any, ...]] = {
    "engine": (str, "postgresql"),
    "name": (str, ""),  # postgresql: unset parts come from DATABASE_URL in the remote shared/.env
    "user": (str, ""),
    "host": (str, ""),  # as seen from the server ("" = DATABASE_URL's, else the local socket)
    "port": (int, 0, Range(0, 65535, why="a TCP port; 0 = DATABASE_URL's")),  # 0 = DATABASE_URL's, else 5432
    "password": (str, ""),  # secret: never printed nor put on a command line
    "url_from_env": (bool, True),
    "pg_bin": (str, ""),  # directory of pg_dump/pg_restore/psql on the host ("" = PATH)
    "path": (str, ""),  # sqlite: the database file, relative to shared/
    "keep_backups": (int, 5, Range(1, 1000, why="the newest snapshot is always kept")),
    "migrate": (str, ""),  # shell command run in the new release, e.g. "alembic upgrade head"
    "checks": (dict, {}),
}

DB_CHECKS_SCHEMA: dict[str, tuple[Any, ...]] = {
    "extensions": (dict, {}),  # name = minimum version ("" = any), e.g. { vector = "0.8" }
    "columns": (dict, {}),  # "table.column" = type, e.g. { "embeddings.embedding_vector" = "vector" }
    "indexes": (dict, {}),  # table = [index names]
    "alembic": (str, ""),  # alembic config in the release ("alembic.ini"): pending migrations check
}

WORKER_SCHEMA: dict[str, tuple[Any, ...]] = {
    "gate": (list, []),  # commands run in the new release before anything goes live (e.g. pytest)
    "build": (list, []),  # commands that build the release (e.g. "prisma generate")
    "smoke": (list, []),  # commands run after the migrations, before the switch (a dry run on a small batch)
    "health": (dict, {}),  # { command = "...", expect = "HEALTHY", timeout = 60 }
    "processes": (list, []),  # [{ name = "...", command = "...", stop_timeout = 30 }]
    "manager": (str, "pidfile"),  # how the processes run: supervisor | systemd | pidfile
    "supervisor_conf": (str, ""),
    "sudo": (bool, False),  # supervisorctl / systemctl through `sudo -n`
    "cron": (list, []),  # [{ schedule = "*/15 * * * *", command = "python -m engine.run" }]
    "crontab": (str, ""),  # "" = the deploy user's crontab (crontab -l / crontab -); else a file (relative: to deploy_to)
    "alerts": (dict, {}),  # { max_failure_rate = 0.10, min_disk_percent = 10 }
    "command_timeout": ((int, float), 1800, TIMEOUT),  # seconds for each gate/build/smoke command
}

WORKER_HEALTH_SCHEMA: dict[str, tuple[Any, ...]] = {
    "command": (str, ""),
    "expect": (str, "HEALTHY"),  # a word the status line must contain
    "timeout": ((int, float), 60, TIMEOUT),
}

WORKER_PROCESS_SCHEMA: dict[str, tuple[Any, ...]] = {
    "name": (str, REQUIRED),  # supervisor program / systemd unit / pidfile name
    "command": (str, REQUIRED),
    "stop_timeout": ((int, float), 30, TIMEOUT),  # seconds a job in progress gets to finish after SIGTERM
}

CRON_SCHEMA: dict[str, tuple[Any, ...]] = {
    "schedule": (str, REQUIRED),
    "command": (str, REQUIRED),
}

ALERTS_SCHEMA: dict[str, tuple[Any, ...]] = {
    "max_failure_rate": ((int, float), 0.10, Range(0, 1, why="a fraction: 0.10 = 10 %")),
    "min_disk_percent": ((int, float), 10, Range(0, 100, why="percent")),
}

COMPOSE_SCHEMA: dict[str, tuple[Any, ...]] = {
    "file": (str, "compose.yaml"),  # the compose file, in the release
    "mode": (str, "in-place"),  # in-place | blue-green | canary
    "project": (str, ""),  # compose project name (default: the app name; colors add -blue / -green)
    "service": (str, ""),  # the service nginx routes to (and `migrate` runs in)
    "ports": (dict, {"blue": 8101, "green": 8102}),  # host port of each color (in-place uses blue)
    "port_env": (str, "SHIPFAB_PORT"),  # the variable the compose file reads its port from
    "docker": (str, "docker"),  # shell prefix running the docker CLI (e.g. "sudo -n docker")
    "health": (list, []),  # URLs probed on every new release; `{port}` is the color's port
    "ready": (str, ""),  # readiness URL (`{port}`): must answer 200 before any traffic
    "smoke": (list, []),  # shell commands run on the host against the standby; `{addr}` = 127.0.0.1:port
    "probe_timeout": ((int, float), 60, TIMEOUT),
    "watch_seconds": ((int, float), 300, Range(0, 86400, why="seconds")),
    "max_error_rate": ((int, float), 0.05, Range(0, 1, why="a fraction")),
    "min_success": ((int, float), 0.995, Range(0, 1, why="a fraction")),
    "min_requests": (int, 20, Range(0, 10**9)),
    "steps": (list, [5, 25, 50, 100]),  # canary weights (percent of requests to the new color)
    "interval": ((int, float), 60, Range(0, 86400, why="seconds")),
    "stop_old": (bool, False),  # stop the old color once the watch window passed (rollback is then an `up`)
    "min_disk_gb": ((int, float), 0, Range(0, 10**6)),  # free space needed under docker's data root
}

STREAMLIT_SCHEMA: dict[str, tuple[Any, ...]] = {
    "script": (str, ""),  # the app's script, relative to the release (required by the streamlit stack)
    "instances": (list, []),  # [{ port = 8501, role = "primary" }, { port = 8504, role = "staging" }]
    "manager": (str, "pidfile"),  # supervisor program / systemd unit per port: <program>-<port> / <program>@<port>
    "program": (str, ""),  # default: the app name
    "supervisor_conf": (str, ""),
    "sudo": (bool, False),
    "address": (str, "127.0.0.1"),  # --server.address of every instance
    "options": (dict, {}),  # more `streamlit run` options: { "server.maxUploadSize" = 200 }
    "restart_timeout": ((int, float), 60, TIMEOUT),  # one instance: restart until health + page answer
    "boot_check": (bool, True),  # run the script once with streamlit's AppTest before anything restarts
}

WATCH_SCHEMA: dict[str, tuple[Any, ...]] = {
    "seconds": ((int, float), 60, Range(0, 86400, why="seconds; 0 = no watch")),
    "max_cpu_percent": ((int, float), 50, Range(0, 100000, above=True, why="percent of one core, averaged")),
    "max_memory_mb": ((int, float), 1000, Range(0, 2**40, above=True, why="MiB of RSS per instance")),
    "interval": ((int, float), 2, Range(0.1, 3600, why="seconds between samples")),
}

NGINX_SCHEMA: dict[str, tuple[Any, ...]] = {
    "upstream_file": (str, REQUIRED),  # the include file shipfab owns: one `upstream NAME { ... }` block
    "upstream": (str, "app"),  # the upstream's name, as nginx.conf's proxy_pass uses it
    "test": (str, "nginx -t"),  # shell command: test the configuration (e.g. "sudo -n nginx -t")
    "reload": (str, "nginx -s reload"),  # shell command: reload it gracefully
    "access_log": (str, ""),  # nginx's access log (stacks that gate on the error rate read it)
    "pid_file": (str, "/run/nginx.pid"),  # nginx's master: a change returns once its old workers stopped taking requests
}

APP_SCHEMA: dict[str, tuple[Any, ...]] = {
    "stack": (str, REQUIRED),
    "deploy_to": (str, REQUIRED),
    "repo": (str, ""),  # URL the host can reach: kept as a mirror on the host
    "checkout": (str, ""),  # local git checkout, packed with git archive (default ".")
    "subdir": (str, ""),  # the app lives in this folder of the repository
    "branch": (str, "HEAD"),
    "python": (str, "python3"),
    "keep_releases": (int, 5, Range(2, 1000, why="current and previous are always kept")),
    "shared_files": (list, [".env"]),
    "shared_dirs": (list, ["logs"]),
    "wheelhouse": (str, ""),  # remote dir of wheels: pip runs --no-index --find-links
    "extra_requirements": (list, []),  # pip requirement specifiers installed after requirements.txt
    "gunicorn": (dict, {}),
    "health": (dict, {}),
    "preflight": (dict, {}),
    "notify": (dict, {}),
    "nginx": (dict, None),  # no table: shipfab does not manage the nginx upstream of this app
    "database": (dict, None),  # no table: no database for shipfab to look after (an empty one: all from DATABASE_URL)
    "secret_keys": (list, []),  # .env keys whose values are secret although their names do not say so
    "public_keys": (list, []),  # .env keys whose values are not secret although their names match the rule
    "worker": (dict, {}),
    "compose": (dict, {}),
    "streamlit": (dict, {}),
    "watch": (dict, {}),  # the streamlit stack's watch window after a deploy
}

CONNECTION_SCHEMA: dict[str, tuple[Any, ...]] = {
    "hostname": (str, ""),
    "user": (str, ""),
    "port": (int, 22, PORT),
    "key_filename": (str, ""),
    "known_hosts": (str, ""),
    "connect_timeout": ((int, float), 10, TIMEOUT),
    "app": (str, ""),
}

# [defaults] only: how a fleet is worked on.
FLEET_SCHEMA: dict[str, tuple[Any, ...]] = {
    "parallel": (int, DEFAULT_PARALLEL, Range(1, 256)),  # hosts worked on at once (`--parallel` overrides it)
}

HOST_SCHEMA: dict[str, tuple[Any, ...]] = {
    **CONNECTION_SCHEMA,
    "local": (bool, False),  # the sandbox: runs on this machine, no ssh
    "primary": (bool, False),
    "overrides": (dict, {}),  # app settings for this host only (deep-merged)
}

TOP_SCHEMA: dict[str, tuple[Any, ...]] = {
    "default": (str, ""),
    "defaults": (dict, {}),
    "apps": (dict, {}),
    "hosts": (dict, {}),
    "groups": (dict, {}),
}

TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "table"}


@dataclass(frozen=True)
class GunicornSettings:
    manager: str
    program: str
    supervisor_conf: str
    sudo: bool
    bind: str
    app_module: str
    workers: int
    timeout: int
    control_socket: bool
    restart_timeout: float
    args: tuple[str, ...]


@dataclass(frozen=True)
class HealthSettings:
    url: str
    via: str
    status: int
    body: str
    json: dict[str, Any]
    timeout: float
    request_timeout: float


@dataclass(frozen=True)
class PreflightSettings:
    min_disk_percent: float
    min_disk_mb: int
    min_memory_mb: int
    python_min: str
    nginx: bool
    nginx_conf: str
    required_env: tuple[str, ...]
    binaries: tuple[str, ...]


@dataclass(frozen=True)
class NotifySettings:
    webhooks: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class NginxSettings:
    upstream_file: str
    upstream: str
    test: str
    reload: str
    access_log: str
    pid_file: str


@dataclass(frozen=True)
class DbChecks:
    extensions: dict[str, str]
    columns: dict[str, str]
    indexes: dict[str, tuple[str, ...]]
    alembic: str


@dataclass(frozen=True)
class DatabaseSettings:
    engine: str
    name: str
    user: str
    host: str
    port: int
    password: str = field(repr=False)
    url_from_env: bool
    pg_bin: str
    path: str
    keep_backups: int
    migrate: str
    checks: DbChecks


@dataclass(frozen=True)
class WorkerProcess:
    name: str
    command: str
    stop_timeout: float


@dataclass(frozen=True)
class CronEntry:
    schedule: str
    command: str


@dataclass(frozen=True)
class WorkerSettings:
    gate: tuple[str, ...]
    build: tuple[str, ...]
    smoke: tuple[str, ...]
    health_command: str
    health_expect: str
    health_timeout: float
    processes: tuple[WorkerProcess, ...]
    manager: str
    supervisor_conf: str
    sudo: bool
    cron: tuple[CronEntry, ...]
    crontab: str  # "" = the deploy user's crontab; else an absolute file path
    max_failure_rate: float
    min_disk_percent: float
    command_timeout: float


@dataclass(frozen=True)
class ComposeSettings:
    file: str
    mode: str
    project: str
    service: str
    ports: dict[str, int]
    port_env: str
    docker: str
    health: tuple[str, ...]
    ready: str
    smoke: tuple[str, ...]
    probe_timeout: float
    watch_seconds: float
    max_error_rate: float
    min_success: float
    min_requests: int
    steps: tuple[int, ...]
    interval: float
    stop_old: bool
    min_disk_gb: float


@dataclass(frozen=True)
class StreamlitInstance:
    port: int
    role: str  # primary (serves users, behind nginx) | staging (gets a release first)


@dataclass(frozen=True)
class WatchSettings:
    seconds: float
    max_cpu_percent: float
    max_memory_mb: float
    interval: float


@dataclass(frozen=True)
class StreamlitSettings:
    script: str
    instances: tuple[StreamlitInstance, ...]
    manager: str
    program: str
    supervisor_conf: str
    sudo: bool
    address: str
    options: tuple[tuple[str, str], ...]
    restart_timeout: float
    boot_check: bool
    watch: WatchSettings


@dataclass(frozen=True)
class App:
    name: str
    stack: str
    deploy_to: str
    repo: str
    checkout: str
    subdir: str
    branch: str
    python: str
    keep_releases: int
    shared_files: tuple[str, ...]
    shared_dirs: tuple[str, ...]
    wheelhouse: str
    gunicorn: GunicornSettings
    health: HealthSettings
    preflight: PreflightSettings
    notify: NotifySettings
    database: DatabaseSettings | None = None
    secret_keys: tuple[str, ...] = ()
    public_keys: tuple[str, ...] = ()
    extra_requirements: tuple[str, ...] = ()
    nginx: NginxSettings | None = None
    worker: WorkerSettings | None = None
    compose: ComposeSettings | None = None
    streamlit: StreamlitSettings | None = None


@dataclass(frozen=True)
class Target:
    """One host and the app deployed on it: everything a step needs to know."""

    name: str
    hostname: str
    app: App
    user: str = ""
    port: int = 22
    key_filename: str = ""
    known_hosts: str = ""
    connect_timeout: float = 10
    local: bool = False
    primary: bool = False
    ssh_alias: bool = False  # not in hosts.toml: Fabric resolves it (~/.ssh/config, DNS)


@dataclass
class Inventory:
    path: Path
    default: str
    targets: dict[str, Target] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    apps: dict[str, App] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)  # values written as { secret = "..." }

    def names(self) -> list[str]:
        return sorted(self.targets) + sorted(self.groups)

    @property
    def parallel(self) -> int:
        """Hosts worked on at once ([defaults] parallel)."""
        return int(self.defaults.get("parallel", DEFAULT_PARALLEL))

    def resolve(self, name: str | None) -> list[Target]:
        """Expand a -H value (host, group, or a name for Fabric/ssh config) into targets."""
        if not name:
            if not self.default:
                raise InventoryError(
                    f"{self.path}: no -H given and no `default` target set; "
                    f"known names: {', '.join(self.names()) or '(none)'}"
                )
            name = self.default
        if name in self.targets:
            return [self.targets[name]]
        if name in self.groups:
            return [self.targets[h] for h in self.groups[name]]
        return [self._fallthrough(name)]

    def all_targets(self) -> list[Target]:
        return list(self.targets.values())

    def _fallthrough(self, name: str) -> Target:
        app = self.apps.get(self.defaults.get("app", "")) if self.defaults.get("app") else None
        if app is None and len(self.apps) == 1:
            app = next(iter(self.apps.values()))
        if app is None:
            raise InventoryError(
                f"{self.path}: `{name}` is not a host or group here and no app can be chosen for it "
                f"(set defaults.app); known names: {', '.join(self.names()) or '(none)'}"
            )
        conn = _connection_settings(self.defaults, {})
        return Target(name=name, hostname=name, app=app, ssh_alias=True, **conn)


def inventory_path() -> Path:
    return Path(os.environ.get("SHIPFAB_HOSTS", "hosts.toml"))


def load_inventory(path: Path | None = None) -> Inventory:
    """Read and validate hosts.toml (default ./hosts.toml or $SHIPFAB_HOSTS)."""
    path = Path(path) if path else inventory_path()
    if not path.is_file():
        raise InventoryError(_one_line(f"{path}: inventory not found (create it or set SHIPFAB_HOSTS)"))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InventoryError(_one_line(f"{path}: cannot read it: {exc.strerror or exc}")) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InventoryError(
            _one_line(f"{path}: not UTF-8 text (byte {exc.start} is {raw[exc.start:exc.start + 1]!r}); save it as UTF-8")
        ) from None
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise InventoryError(f"{_one_line(str(path))}: not valid TOML: nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, and integers too long to convert
        raise InventoryError(_one_line(f"{path}: not valid TOML: {exc}")) from None
    return parse_inventory(data, path)


def parse_inventory(data: dict[str, Any], path: Path) -> Inventory:
    """Validate the parsed TOML and build the Inventory (errors name file and key path)."""
    where = _Where(path)
    _check_depth(data, where)
    secrets: set[str] = set()
    data = unwrap_marked(data, secrets)
    top = _check_table(data, TOP_SCHEMA, "", where)
    defaults = _check_table(top["defaults"], {**CONNECTION_SCHEMA, **FLEET_SCHEMA}, "defaults", where)
    _check_login(defaults, "defaults", where)
    base_dir = path.resolve().parent

    raw_apps = top["apps"]
    inv = Inventory(path=path, default=top["default"], defaults=defaults, secrets=secrets)
    for name, raw in raw_apps.items():
        _expect(raw, dict, _key("apps", name), where)
        inv.apps[name] = _build_app(name, raw, _key("apps", name), where, base_dir, local=None)

    for name, raw in top["hosts"].items():
        key = _key("hosts", name)
        _expect(raw, dict, key, where)
        host = _check_table(raw, HOST_SCHEMA, key, where)
        _check_login(host, key, where)
        app_name = host["app"] or defaults.get("app", "") or (next(iter(raw_apps)) if len(raw_apps) == 1 else "")
        if not app_name:
            where.fail(f"{key}.app", "missing required key (which app runs on this host?)")
        if app_name not in raw_apps:
            where.fail(f"{key}.app", f"unknown app {_show(app_name)}; known apps: {', '.join(raw_apps) or '(none)'}")
        # Built per host: overrides apply, and deploy_to is checked for this kind of host.
        merged = _deep_merge(raw_apps[app_name], host["overrides"])
        app_key = f"{key}.overrides" if host["overrides"] else f"apps.{app_name}"
        app = _build_app(app_name, merged, app_key, where, base_dir, local=host["local"], host=name)
        if not host["local"] and not host["hostname"]:
            where.fail(f"{key}.hostname", "missing required key (or set local = true for the sandbox)")
        conn = _connection_settings(defaults, raw)
        inv.targets[name] = Target(
            name=name,
            hostname=host["hostname"] or "localhost",
            app=app,
            local=host["local"],
            primary=host["primary"],
            **conn,
        )

    for gname, members in top["groups"].items():
        key = _key("groups", gname)
        _expect(members, list, key, where)
        if not members:
            where.fail(key, "a group needs at least one host")
        for i, member in enumerate(members):
            _expect(member, str, f"{key}[{i}]", where)
            if member not in inv.targets:
                where.fail(f"{key}[{i}]", f"unknown host {_show(member)}; known hosts: {', '.join(inv.targets) or '(none)'}")
        if gname in inv.targets:
            where.fail(key, f"{_show(gname)} is both a host and a group")
        inv.groups[gname] = list(members)

    if inv.default and inv.default not in inv.targets and inv.default not in inv.groups:
        where.fail("default", f"{_show(inv.default)} is not a host or group; known names: {', '.join(inv.names())}")
    return inv


class _Where:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> None:
        raise InventoryError(_one_line(f"{self.path}: {key or '(top level)'}: {message}"))


def _one_line(text: str) -> str:
    """Control characters (newlines...) escaped: every error is exactly one line."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _key(prefix: str, name: str) -> str:
    """A key path as TOML writes it: `apps.web`, `hosts."odd name"`."""
    part = name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)
    return f"{prefix}.{part}" if prefix else part


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = MAX_SHOWN
_short_repr.maxlevel = 2


def _show(value: Any) -> str:
    """A value quoted in a message: shortened, never a megabyte, never an exception."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    try:
        return _short_repr.repr(value)
    except ValueError:  # an integer too long to convert, inside a container
        return f"a {TYPE_NAMES.get(type(value), type(value).__name__)} holding a huge integer"


def _check_depth(data: Any, where: _Where) -> None:
    """Refuse tables and arrays nested deeper than MAX_DEPTH (without recursion)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, key, depth = stack.pop()
        if depth > MAX_DEPTH:
            where.fail(key, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((v, _key(key, str(k)), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value))


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(TYPE_NAMES.get(t, t.__name__) for t in types)


def _expect(value: Any, expected: type | tuple[type, ...], key: str, where: _Where) -> None:
    types = expected if isinstance(expected, tuple) else (expected,)
    # bool is an int in Python; TOML keeps them apart, so do we.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        got = TYPE_NAMES.get(type(value), type(value).__name__)
        where.fail(key, f"expected {_type_name(expected)}, got {got} {_show(value)}")
    if isinstance(value, str) and any(not ch.isprintable() and ch not in "\t\n" for ch in value):
        where.fail(key, f"contains a control character: {_show(value)}")


def _check_table(raw: dict[str, Any], schema: dict[str, tuple[Any, ...]], key: str, where: _Where) -> dict[str, Any]:
    """Known keys only, each of its type and range; defaults for the keys not given."""
    out: dict[str, Any] = {}
    for k in raw:
        if k not in schema:
            where.fail(_key(key, k), f"unknown key; expected one of: {', '.join(schema)}")
    for k, (typ, default, *limits) in schema.items():
        if k in raw:
            _expect(raw[k], typ, _key(key, k), where)
            problem = limits[0].problem(raw[k]) if limits else None
            if problem:
                where.fail(_key(key, k), problem)
            out[k] = raw[k]
        elif default is REQUIRED:
            where.fail(_key(key, k), "missing required key")
        else:
            out[k] = copy.deepcopy(default)
    return out


def _check_login(table: dict[str, Any], key: str, where: _Where) -> None:
    """A host name or user is one word that is not an option (`-oProxyCommand=...`)."""
    for k in ("hostname", "user"):
        value = table[k]
        if value.startswith("-") or any(ch.isspace() for ch in value):
            where.fail(f"{key}.{k}", f"not a valid {k}: {_show(value)}")


def _strings(values: list[Any], key: str, where: _Where) -> tuple[str, ...]:
    """An array of strings, each item checked."""
    for i, item in enumerate(values):
        _expect(item, str, f"{key}[{i}]", where)
    return tuple(values)


def _choice(value: str, choices: tuple[str, ...], key: str, where: _Where) -> None:
    if value not in choices:
        where.fail(key, f"unknown value {_show(value)}; expected one of: {', '.join(choices)}")


def _build_app(
    name: str, raw: dict[str, Any], key: str, where: _Where, base_dir: Path, local: bool | None, host: str = ""
) -> App:
    """Validate one app's settings. `local` None: not yet tied to a host (paths checked per host)."""
    a = _check_table(raw, APP_SCHEMA, key, where)
    _choice(a["stack"], STACKS, f"{key}.stack", where)
    g = _check_table(a["gunicorn"], GUNICORN_SCHEMA, f"{key}.gunicorn", where)
    _choice(g["manager"], MANAGERS, f"{key}.gunicorn.manager", where)
    h = _check_table(a["health"], HEALTH_SCHEMA, f"{key}.health", where)
    pf = _check_table(a["preflight"], PREFLIGHT_SCHEMA, f"{key}.preflight", where)
    nt = _check_table(a["notify"], NOTIFY_SCHEMA, f"{key}.notify", where)
    _choice(h["via"], HEALTH_VIA, f"{key}.health.via", where)
    if a["stack"] in URL_HEALTH_STACKS and not h["url"]:
        where.fail(f"{key}.health.url", f"missing required key (the {a['stack']} stack checks this URL after a deploy)")
    for list_key in ("shared_files", "shared_dirs"):
        for i, item in enumerate(_strings(a[list_key], f"{key}.{list_key}", where)):
            if item.startswith("/") or ".." in item.split("/"):
                where.fail(f"{key}.{list_key}[{i}]", f"must be a path inside the release, got {_show(item)}")
    if a["repo"] and a["checkout"]:
        where.fail(f"{key}.repo", "set either repo (a URL the host clones) or checkout (a local path), not both")
    deploy_to = a["deploy_to"]
    if local:
        deploy_to = str((base_dir / deploy_to).resolve())
    elif local is False and not deploy_to.startswith("/"):
        where.fail(f"{key}.deploy_to", f"must be an absolute path on ssh host {_show(host)}, got {_show(deploy_to)}")
    checkout = "" if a["repo"] else str((base_dir / (a["checkout"] or ".")).resolve())
    if local is not None:
        g["bind"], h["url"] = (_sandbox_port(g["bind"], f"{key}.gunicorn.bind", deploy_to, local, where),
                               _sandbox_port(h["url"], f"{key}.health.url", deploy_to, local, where))
    return App(
        name=name,
        stack=a["stack"],
        deploy_to=deploy_to.rstrip("/") or "/",
        repo=a["repo"],
        checkout=checkout,
        subdir=a["subdir"].strip("/"),
        branch=a["branch"],
        python=a["python"],
        keep_releases=a["keep_releases"],
        shared_files=tuple(a["shared_files"]),
        shared_dirs=tuple(a["shared_dirs"]),
        wheelhouse=a["wheelhouse"],
        gunicorn=GunicornSettings(**{**g, "program": g["program"] or name,
                                     "args": _strings(g["args"], f"{key}.gunicorn.args", where)}),
        health=HealthSettings(**h),
        preflight=PreflightSettings(**{**pf, "required_env": _strings(pf["required_env"], f"{key}.preflight.required_env", where),
                                       "binaries": _strings(pf["binaries"], f"{key}.preflight.binaries", where)}),
        notify=NotifySettings(webhooks=_strings(nt["webhooks"], f"{key}.notify.webhooks", where), timeout=nt["timeout"]),
        database=_database(a["database"], f"{key}.database", where) if a["database"] is not None else None,
        secret_keys=_strings(a["secret_keys"], f"{key}.secret_keys", where),
        public_keys=_strings(a["public_keys"], f"{key}.public_keys", where),
        extra_requirements=_requirements(a["extra_requirements"], f"{key}.extra_requirements", where),
        nginx=_nginx(a["nginx"], f"{key}.nginx", where) if a["nginx"] is not None else None,
        worker=_worker(a["worker"], f"{key}.worker", where, deploy_to, a["stack"]) if a["stack"] == "worker" or a["worker"]
        else None,
        compose=_compose(a["compose"], f"{key}.compose", where, name, a["nginx"]) if a["stack"] == "compose" else None,
        streamlit=_streamlit(a, name, key, where, deploy_to, local) if a["stack"] == "streamlit" else None,
    )


def _nginx(raw: dict[str, Any], key: str, where: _Where) -> NginxSettings:
    n = _check_table(raw, NGINX_SCHEMA, key, where)
    if not n["upstream_file"].startswith("/"):
        where.fail(f"{key}.upstream_file", f"must be an absolute path, got {_show(n['upstream_file'])}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", n["upstream"]):
        where.fail(f"{key}.upstream", f"not an nginx upstream name: {_show(n['upstream'])}")
    return NginxSettings(**n)


def _worker(raw: dict[str, Any], key: str, where: _Where, deploy_to: str, stack: str) -> WorkerSettings:
    if stack != "worker":
        where.fail(key, f"only for stack \"worker\" (this app's stack is {_show(stack)})")
    w = _check_table(raw, WORKER_SCHEMA, key, where)
    _choice(w["manager"], MANAGERS, f"{key}.manager", where)
    h = _check_table(w["health"], WORKER_HEALTH_SCHEMA, f"{key}.health", where)
    al = _check_table(w["alerts"], ALERTS_SCHEMA, f"{key}.alerts", where)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", h["expect"]):
        where.fail(f"{key}.health.expect", f"must be one word like \"HEALTHY\", got {_show(h['expect'])}")
    commands = {}
    for list_key in ("gate", "build", "smoke"):
        commands[list_key] = _strings(w[list_key], f"{key}.{list_key}", where)
        for i, cmd in enumerate(commands[list_key]):
            _one_command(cmd, f"{key}.{list_key}[{i}]", where)
    _one_command(h["command"], f"{key}.health.command", where, allow_empty=True)
    processes, names = [], set()
    for i, item in enumerate(w["processes"]):
        k = f"{key}.processes[{i}]"
        _expect(item, dict, k, where)
        p = _check_table(item, WORKER_PROCESS_SCHEMA, k, where)
        if not re.fullmatch(r"[A-Za-z0-9_.@-]+", p["name"]) or p["name"] in names:
            where.fail(f"{k}.name", f"must be a unique name of letters, digits, _ . @ -, got {_show(p['name'])}")
        names.add(p["name"])
        _one_command(p["command"], f"{k}.command", where)
        processes.append(WorkerProcess(**p))
    cron = []
    for i, item in enumerate(w["cron"]):
        k = f"{key}.cron[{i}]"
        _expect(item, dict, k, where)
        c = _check_table(item, CRON_SCHEMA, k, where)
        fields = c["schedule"].split()
        if not (len(fields) == 5 or (len(fields) == 1 and fields[0].startswith("@"))) or any(
                not re.fullmatch(r"[A-Za-z0-9*/,@-]+", f) for f in fields):
            where.fail(f"{k}.schedule", f"not a cron schedule (five fields or @daily...): {_show(c['schedule'])}")
        _one_command(c["command"], f"{k}.command", where)
        cron.append(CronEntry(" ".join(fields), c["command"]))
    crontab = w["crontab"]
    if crontab and not crontab.startswith("/"):
        crontab = f"{deploy_to.rstrip('/')}/{crontab}"
    return WorkerSettings(
        gate=commands["gate"], build=commands["build"], smoke=commands["smoke"], health_command=h["command"],
        health_expect=h["expect"], health_timeout=h["timeout"], processes=tuple(processes), manager=w["manager"],
        supervisor_conf=w["supervisor_conf"], sudo=w["sudo"], cron=tuple(cron), crontab=crontab,
        max_failure_rate=al["max_failure_rate"], min_disk_percent=al["min_disk_percent"],
        command_timeout=w["command_timeout"])


def _one_command(cmd: str, key: str, where: _Where, allow_empty: bool = False) -> None:
    """A command from hosts.toml: one line (a crontab line, a launcher argument), not empty."""
    if "\n" in cmd or (not cmd.strip() and not allow_empty):
        where.fail(key, f"must be one non-empty line, got {_show(cmd)}")


COMPOSE_MODES = ("in-place", "blue-green", "canary")


def _compose(raw: dict[str, Any], key: str, where: _Where, app: str, nginx: dict[str, Any] | None) -> ComposeSettings:
    c = _check_table(raw, COMPOSE_SCHEMA, key, where)
    _choice(c["mode"], COMPOSE_MODES, f"{key}.mode", where)
    if set(c["ports"]) != {"blue", "green"}:
        where.fail(f"{key}.ports", "expected a table with exactly `blue` and `green`")
    for color, port in c["ports"].items():
        _expect(port, int, f"{key}.ports.{color}", where)
        problem = PORT.problem(port)
        if problem:
            where.fail(f"{key}.ports.{color}", problem)
    if c["ports"]["blue"] == c["ports"]["green"]:
        where.fail(f"{key}.ports", "blue and green need two different ports")
    for i, step in enumerate(c["steps"]):
        _expect(step, int, f"{key}.steps[{i}]", where)
        if not 0 < step <= 100:
            where.fail(f"{key}.steps[{i}]", f"must be a percentage from 1 to 100, got {_show(step)}")
    if c["steps"] != sorted(c["steps"]) or not c["steps"] or c["steps"][-1] != 100:
        where.fail(f"{key}.steps", "must be increasing and end at 100")
    project = c["project"] or app
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", project):
        where.fail(f"{key}.project", f"not a compose project name (lowercase letters, digits, - and _): {_show(project)}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", c["port_env"]):
        where.fail(f"{key}.port_env", f"not an environment variable name: {_show(c['port_env'])}")
    if c["mode"] != "in-place" and nginx is None:
        where.fail(f"{key}.mode", f"{c['mode']} moves traffic through nginx: add an [apps.{app}.nginx] table")
    if c["mode"] != "in-place" and not c["service"]:
        where.fail(f"{key}.service", f"{c['mode']} needs the service nginx routes to")
    return ComposeSettings(**{**c, "project": project, "ports": dict(c["ports"]),
                              "health": _strings(c["health"], f"{key}.health", where),
                              "smoke": _strings(c["smoke"], f"{key}.smoke", where), "steps": tuple(c["steps"])})


STREAMLIT_ROLES = ("primary", "staging")
STREAMLIT_MANAGED_OPTIONS = ("server.port", "server.address", "server.headless", "server.scriptHealthCheckEnabled")


def _streamlit(a: dict[str, Any], name: str, key: str, where: _Where, deploy_to: str, local: bool | None) -> StreamlitSettings:
    s = _check_table(a["streamlit"], STREAMLIT_SCHEMA, f"{key}.streamlit", where)
    w = _check_table(a["watch"], WATCH_SCHEMA, f"{key}.watch", where)
    _choice(s["manager"], MANAGERS, f"{key}.streamlit.manager", where)
    script = s["script"]
    if not script:
        where.fail(f"{key}.streamlit.script", "missing required key (the app's script, e.g. \"app.py\")")
    if script.startswith("/") or ".." in script.split("/") or not script.endswith(".py"):
        where.fail(f"{key}.streamlit.script", f"must be a .py file inside the release, got {_show(script)}")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", s["address"]):
        where.fail(f"{key}.streamlit.address", f"not an address: {_show(s['address'])}")
    instances, ports = [], set()
    for i, raw in enumerate(s["instances"]):
        ikey = f"{key}.streamlit.instances[{i}]"
        _expect(raw, dict, ikey, where)
        inst = _check_table(raw, {"port": ((int, str), REQUIRED), "role": (str, "primary")}, ikey, where)
        _choice(inst["role"], STREAMLIT_ROLES, f"{ikey}.role", where)
        port = inst["port"]
        if isinstance(port, str):
            filled = _sandbox_port(port, f"{ikey}.port", deploy_to, bool(local), where) if local is not None else "1"
            if not filled.isdigit():
                where.fail(f"{ikey}.port", f"expected a port number or \"{SANDBOX_PORT}\", got {_show(port)}")
            port = int(filled)
        problem = PORT.problem(port)
        if problem:
            where.fail(f"{ikey}.port", problem)
        if port in ports and local is not None:
            where.fail(f"{ikey}.port", f"port {port} is given twice")
        ports.add(port)
        instances.append(StreamlitInstance(port=port, role=inst["role"]))
    if not any(i.role == "primary" for i in instances):
        where.fail(f"{key}.streamlit.instances", "needs at least one instance with role = \"primary\"")
    options = []
    for opt, value in s["options"].items():
        okey = _key(f"{key}.streamlit.options", opt)
        if not re.fullmatch(r"[a-z]+\.[A-Za-z]+", opt):
            where.fail(okey, "not a streamlit option name like \"server.maxUploadSize\"")
        if opt in STREAMLIT_MANAGED_OPTIONS:
            where.fail(okey, "set by shipfab (instances / address)")
        _expect(value, (str, int, float, bool), okey, where)
        options.append((opt, str(value).lower() if isinstance(value, bool) else str(value)))
    return StreamlitSettings(**{**s, "program": s["program"] or name, "instances": tuple(instances),
                                "options": tuple(options), "watch": WatchSettings(**w)})


def sandbox_port(deploy_to: str) -> int:
    """The local sandbox's port, derived from its directory: two clones on one machine get two ports."""
    digest = hashlib.sha256(deploy_to.encode()).digest()
    first, count = SANDBOX_PORTS
    return first + int.from_bytes(digest[:4], "big") % count


def _sandbox_port(value: str, key: str, deploy_to: str, local: bool, where: _Where) -> str:
    """`{sandbox_port}` filled in for the local host; refused on an ssh host (it has no sandbox)."""
    if not SANDBOX_PORT_RE.search(value):
        return value
    if not local:
        where.fail(key, f"{SANDBOX_PORT} is only for a local (sandbox) host; give an ssh host a real port")
    return fill_sandbox_port(value, sandbox_port(deploy_to))


def fill_sandbox_port(value: str, port: int) -> str:
    """`{sandbox_port}` -> port, `{sandbox_port+N}` -> port + N (a sandbox with several ports)."""
    return SANDBOX_PORT_RE.sub(lambda m: str(port + int(m.group(1) or 0)), value)


def _requirements(values: list[Any], key: str, where: _Where) -> tuple[str, ...]:
    """pip requirement specifiers (`gunicorn==23.0.0`): one word each, never a pip option."""
    for i, item in enumerate(_strings(values, key, where)):
        if not item or item.startswith("-") or any(ch.isspace() for ch in item):
            where.fail(f"{key}[{i}]", f"not a requirement specifier like \"gunicorn==23.0.0\": {_show(item)}")
    return tuple(values)


def _database(raw: dict[str, Any], key: str, where: _Where) -> DatabaseSettings:
    d = _check_table(raw, DATABASE_SCHEMA, key, where)
    _choice(d["engine"], ENGINES, f"{key}.engine", where)
    c = _check_table(d["checks"], DB_CHECKS_SCHEMA, f"{key}.checks", where)
    if d["engine"] == "sqlite" and not d["path"]:
        where.fail(f"{key}.path", "missing required key for engine sqlite (the database file, relative to shared/)")
    if d["engine"] != "sqlite" and d["path"]:
        where.fail(f"{key}.path", "only for engine sqlite")
    if d["path"].startswith("/") or ".." in d["path"].split("/"):
        where.fail(f"{key}.path", f"must be a path inside shared/, got {_show(d['path'])}")
    if "\n" in d["password"]:
        where.fail(f"{key}.password", "must be one line")
    for name, version in c["extensions"].items():
        _expect(version, str, _key(f"{key}.checks.extensions", name), where)
    for column, typ in c["columns"].items():
        _expect(typ, str, _key(f"{key}.checks.columns", column), where)
        if "." not in column:
            where.fail(_key(f"{key}.checks.columns", column), "name the column as \"table.column\"")
    for table, names in c["indexes"].items():
        _expect(names, list, _key(f"{key}.checks.indexes", table), where)
        _strings(names, _key(f"{key}.checks.indexes", table), where)
    checks = DbChecks(extensions=c["extensions"], columns=c["columns"], alembic=c["alembic"],
                      indexes={t: tuple(n) for t, n in c["indexes"].items()})
    return DatabaseSettings(**{**d, "checks": checks})


def _connection_settings(defaults: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    """Connection keys for one host: its own value where it sets one, else [defaults]."""
    def pick(k: str) -> Any:
        return host[k] if k in host else defaults[k]

    return {
        "user": pick("user"),
        "port": pick("port"),
        "key_filename": os.path.expanduser(pick("key_filename")) if pick("key_filename") else "",
        "known_hosts": os.path.expanduser(pick("known_hosts")) if pick("known_hosts") else "",
        "connect_timeout": pick("connect_timeout"),
    }


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
