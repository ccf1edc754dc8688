"""hosts.toml -> validated Target objects; -H alias/group expansion.

The inventory has four parts: top-level `default` (the target used when no -H is
given), `[defaults]` (connection settings for every host), `[apps.NAME]` (what is
deployed and how) and `[hosts.NAME]` / `[groups]` (where). Every error names the
file, the key path and what is wrong.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InventoryError
from .secrets import unwrap_marked

STACKS = ("gunicorn",)
MANAGERS = ("systemd", "supervisor", "pidfile")
ENGINES = ("postgresql", "sqlite")
HEALTH_VIA = ("controller", "host")

# Schema: key -> (type, default). A default of REQUIRED means the key must be given.
REQUIRED = object()

GUNICORN_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "manager": (str, "pidfile"),
    "program": (str, ""),  # supervisor program / systemd unit name (default: the app name)
    "supervisor_conf": (str, ""),
    "sudo": (bool, False),
    "bind": (str, "127.0.0.1:8000"),
    "app_module": (str, "app:app"),
    "workers": (int, 2),
    "timeout": (int, 30),
    "control_socket": (bool, True),  # gunicorn >= 25.1: socket under shared/; false for older gunicorn
    "restart_timeout": ((int, float), 60),
    "args": (list, []),
}

HEALTH_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "url": (str, REQUIRED),
    "via": (str, "controller"),
    "status": (int, 200),
    "body": (str, ""),
    "json": (dict, {}),
    "timeout": ((int, float), 30),
    "request_timeout": ((int, float), 5),
}

PREFLIGHT_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "min_disk_percent": ((int, float), 10),
    "min_disk_mb": (int, 1024),
    "min_memory_mb": (int, 128),
    "python_min": (str, "3.8"),
    "nginx": (bool, False),  # the app sits behind nginx on this host: check the binary and `nginx -t`
    "nginx_conf": (str, ""),  # test this configuration file (`nginx -t -c FILE`) instead of nginx's default
    "required_env": (list, []),  # keys that must be present and non-empty in shared/.env
    "binaries": (list, []),  # more binaries the app needs on the host
}

NOTIFY_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "webhooks": (list, []),  # Slack-compatible incoming-webhook URLs
    "timeout": ((int, float), 3),
}

DATABASE_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "engine": (str, "postgresql"),
    "name": (str, ""),  # postgresql: unset parts come from DATABASE_URL in the remote shared/.env
    "user": (str, ""),
    "host": (str, ""),  # as seen from the server ("" = DATABASE_URL's, else the local socket)
    "port": (int, 0),  # 0 = DATABASE_URL's, else 5432
    "password": (str, ""),  # secret: never printed nor put on a command line
    "url_from_env": (bool, True),
    "pg_bin": (str, ""),  # directory of pg_dump/pg_restore/psql on the host ("" = PATH)
    "path": (str, ""),  # sqlite: the database file, relative to shared/
    "keep_backups": (int, 5),
    "migrate": (str, ""),  # shell command run in the new release, e.g. "alembic upgrade head"
    "checks": (dict, {}),
}

DB_CHECKS_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "extensions": (dict, {}),  # name = minimum version ("" = any), e.g. { vector = "0.8" }
    "columns": (dict, {}),  # "table.column" = type, e.g. { "embeddings.embedding_vector" = "vector" }
    "indexes": (dict, {}),  # table = [index names]
    "alembic": (str, ""),  # alembic config in the release ("alembic.ini"): pending migrations check
}

APP_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "stack": (str, REQUIRED),
    "deploy_to": (str, REQUIRED),
    "repo": (str, ""),  # URL the host can reach: kept as a mirror on the host
    "checkout": (str, ""),  # local git checkout, packed with git archive (default ".")
    "subdir": (str, ""),  # the app lives in this folder of the repository
    "branch": (str, "HEAD"),
    "python": (str, "python3"),
    "keep_releases": (int, 5),
    "shared_files": (list, [".env"]),
    "shared_dirs": (list, ["logs"]),
    "wheelhouse": (str, ""),  # remote dir of wheels: pip runs --no-index --find-links
    "gunicorn": (dict, {}),
    "health": (dict, REQUIRED),
    "preflight": (dict, {}),
    "notify": (dict, {}),
    "database": (dict, None),  # no table: no database for shipfab to look after (an empty one: all from DATABASE_URL)
}

CONNECTION_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "hostname": (str, ""),
    "user": (str, ""),
    "port": (int, 22),
    "key_filename": (str, ""),
    "known_hosts": (str, ""),
    "connect_timeout": ((int, float), 10),
    "app": (str, ""),
}

HOST_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
    **CONNECTION_SCHEMA,
    "local": (bool, False),  # the sandbox: runs on this machine, no ssh
    "primary": (bool, False),
    "overrides": (dict, {}),  # app settings for this host only (deep-merged)
}

TOP_SCHEMA: dict[str, tuple[type | tuple[type, ...], Any]] = {
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
        raise InventoryError(f"{path}: inventory not found (create it or set SHIPFAB_HOSTS)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None
    return parse_inventory(data, path)


def parse_inventory(data: dict[str, Any], path: Path) -> Inventory:
    """Validate the parsed TOML and build the Inventory (errors name file and key path)."""
    where = _Where(path)
    secrets: set[str] = set()
    data = unwrap_marked(data, secrets)
    top = _check_table(data, TOP_SCHEMA, "", where)
    defaults = _check_table(top["defaults"], {**CONNECTION_SCHEMA}, "defaults", where)
    base_dir = path.resolve().parent

    raw_apps = top["apps"]
    inv = Inventory(path=path, default=top["default"], defaults=defaults, secrets=secrets)
    for name, raw in raw_apps.items():
        _expect(raw, dict, f"apps.{name}", where)
        inv.apps[name] = _build_app(name, raw, f"apps.{name}", where, base_dir, local=None)

    for name, raw in top["hosts"].items():
        key = f"hosts.{name}"
        _expect(raw, dict, key, where)
        host = _check_table(raw, HOST_SCHEMA, key, where)
        app_name = host["app"] or defaults.get("app", "") or (next(iter(raw_apps)) if len(raw_apps) == 1 else "")
        if not app_name:
            where.fail(f"{key}.app", "missing required key (which app runs on this host?)")
        if app_name not in raw_apps:
            where.fail(f"{key}.app", f"unknown app {app_name!r}; known apps: {', '.join(raw_apps) or '(none)'}")
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
        key = f"groups.{gname}"
        _expect(members, list, key, where)
        if not members:
            where.fail(key, "a group needs at least one host")
        for i, member in enumerate(members):
            _expect(member, str, f"{key}[{i}]", where)
            if member not in inv.targets:
                where.fail(f"{key}[{i}]", f"unknown host {member!r}; known hosts: {', '.join(inv.targets) or '(none)'}")
        if gname in inv.targets:
            where.fail(key, f"{gname!r} is both a host and a group")
        inv.groups[gname] = list(members)

    if inv.default and inv.default not in inv.targets and inv.default not in inv.groups:
        where.fail("default", f"{inv.default!r} is not a host or group; known names: {', '.join(inv.names())}")
    return inv


class _Where:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> None:
        raise InventoryError(f"{self.path}: {key or '(top level)'}: {message}")


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
        where.fail(key, f"expected {_type_name(expected)}, got {got} {value!r}")


def _check_table(
    raw: dict[str, Any], schema: dict[str, tuple[Any, Any]], key: str, where: _Where
) -> dict[str, Any]:
    prefix = f"{key}." if key else ""
    out: dict[str, Any] = {}
    for k in raw:
        if k not in schema:
            where.fail(f"{prefix}{k}", f"unknown key; expected one of: {', '.join(schema)}")
    for k, (typ, default) in schema.items():
        if k in raw:
            _expect(raw[k], typ, f"{prefix}{k}", where)
            out[k] = raw[k]
        elif default is REQUIRED:
            where.fail(f"{prefix}{k}", "missing required key")
        else:
            out[k] = copy.deepcopy(default)
    return out


def _choice(value: str, choices: tuple[str, ...], key: str, where: _Where) -> None:
    if value not in choices:
        where.fail(key, f"unknown value {value!r}; expected one of: {', '.join(choices)}")


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
    for list_key, table_key in (("required_env", "preflight"), ("binaries", "preflight"), ("webhooks", "notify")):
        for i, item in enumerate((pf if table_key == "preflight" else nt)[list_key]):
            _expect(item, str, f"{key}.{table_key}.{list_key}[{i}]", where)
    _choice(h["via"], HEALTH_VIA, f"{key}.health.via", where)
    for list_key in ("shared_files", "shared_dirs"):
        for i, item in enumerate(a[list_key]):
            _expect(item, str, f"{key}.{list_key}[{i}]", where)
            if item.startswith("/") or ".." in item.split("/"):
                where.fail(f"{key}.{list_key}[{i}]", f"must be a path inside the release, got {item!r}")
    for i, item in enumerate(g["args"]):
        _expect(item, str, f"{key}.gunicorn.args[{i}]", where)
    if a["keep_releases"] < 2:
        where.fail(f"{key}.keep_releases", "must be at least 2 (current and previous are always kept)")
    if a["repo"] and a["checkout"]:
        where.fail(f"{key}.repo", "set either repo (a URL the host clones) or checkout (a local path), not both")
    deploy_to = a["deploy_to"]
    if local:
        deploy_to = str((base_dir / deploy_to).resolve())
    elif local is False and not deploy_to.startswith("/"):
        where.fail(f"{key}.deploy_to", f"must be an absolute path on ssh host {host!r}, got {deploy_to!r}")
    checkout = "" if a["repo"] else str((base_dir / (a["checkout"] or ".")).resolve())
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
        gunicorn=GunicornSettings(**{**g, "program": g["program"] or name, "args": tuple(g["args"])}),
        health=HealthSettings(**h),
        preflight=PreflightSettings(**{**pf, "required_env": tuple(pf["required_env"]), "binaries": tuple(pf["binaries"])}),
        notify=NotifySettings(webhooks=tuple(nt["webhooks"]), timeout=nt["timeout"]),
        database=_database(a["database"], f"{key}.database", where) if a["database"] is not None else None,
    )


def _database(raw: dict[str, Any], key: str, where: _Where) -> DatabaseSettings:
    d = _check_table(raw, DATABASE_SCHEMA, key, where)
    _choice(d["engine"], ENGINES, f"{key}.engine", where)
    c = _check_table(d["checks"], DB_CHECKS_SCHEMA, f"{key}.checks", where)
    if d["engine"] == "sqlite" and not d["path"]:
        where.fail(f"{key}.path", "missing required key for engine sqlite (the database file, relative to shared/)")
    if d["engine"] != "sqlite" and d["path"]:
        where.fail(f"{key}.path", "only for engine sqlite")
    if d["path"].startswith("/") or ".." in d["path"].split("/"):
        where.fail(f"{key}.path", f"must be a path inside shared/, got {d['path']!r}")
    if not 0 <= d["port"] <= 65535:
        where.fail(f"{key}.port", f"must be a TCP port, got {d['port']}")
    if "\n" in d["password"]:
        where.fail(f"{key}.password", "must be one line")
    if d["keep_backups"] < 1:
        where.fail(f"{key}.keep_backups", "must be at least 1 (the newest snapshot is always kept)")
    for name, version in c["extensions"].items():
        _expect(version, str, f"{key}.checks.extensions.{name}", where)
    for column, typ in c["columns"].items():
        _expect(typ, str, f"{key}.checks.columns.{column}", where)
        if "." not in column:
            where.fail(f"{key}.checks.columns.{column}", "name the column as \"table.column\"")
    for table, names in c["indexes"].items():
        _expect(names, list, f"{key}.checks.indexes.{table}", where)
        for i, name in enumerate(names):
            _expect(name, str, f"{key}.checks.indexes.{table}[{i}]", where)
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
