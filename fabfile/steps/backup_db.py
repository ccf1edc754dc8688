"""backup_db: a verified snapshot of the database in backups/<id>.dump (PostgreSQL,
`pg_dump -Fc`) or backups/<id>.sqlite3 (SQLite's online backup API), taken on the host.

A snapshot counts only once verified: the dump tool exited 0 with nothing on stderr,
the file is not empty and reads back (`pg_restore --list`, SQLite `integrity_check`).
Then, and only then, `<file>.ok` records its checksum and size (`cksum`: CRC-32, which
catches accidental corruption at memory speed; it is no signature against tampering);
restore refuses a snapshot without it or whose checksum changed. A failed backup leaves
nothing behind.

The snapshot file's mtime is set to the moment just before the dump started (the host's
clock): the writes made after it are the ones a restore loses, and every restore says so.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..db import DbConn, env_lines, run_with_db
from ..errors import StepFailed
from ..layout import Layout
from ..remote import Remote

q = shlex.quote
SUFFIXES = {"postgresql": ".dump", "sqlite": ".sqlite3"}
OK = ".ok"  # sidecar written once the snapshot is verified: `cksum` output, "<crc> <size>"
PARTIAL = '"$f.partial"'  # where the script writes before the snapshot is verified

# Copies one SQLite database into another, page by page, while the app keeps using it.
SQLITE_COPY = (
    "import sqlite3, sys\n"
    "src, dst = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])\n"
    "src.backup(dst)\n"
    "dst.close(); src.close()\n"
)
# Exit 0 only when the file is a sound SQLite database.
SQLITE_CHECK = (
    "import sqlite3, sys\n"
    "try:\n"
    '    r = sqlite3.connect(sys.argv[1]).execute("pragma integrity_check").fetchone()[0]\n'
    "except sqlite3.DatabaseError as e:\n"
    "    r = str(e)\n"
    'sys.exit(0 if r == "ok" else "integrity_check: " + r)\n'
)


@dataclass(frozen=True)
class Snapshot:
    id: str
    path: str
    size: int
    checksum: str
    taken_at: float = 0.0  # just before the dump started, the host's clock (epoch seconds)

    def describe(self) -> str:
        if not self.checksum:  # --dry-run: not taken
            return f"{Path(self.path).name} (dry-run)"
        return f"{Path(self.path).name}, {human_size(self.size)}, verified"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def snapshot_path(layout: Layout, snapshot_id: str, engine: str) -> str:
    return f"{layout.backups}/{snapshot_id}{SUFFIXES[engine]}"


def verify_cmd(conn: DbConn, python: str, file: str) -> str:
    """Exit 0 when `file` (a shell word) reads back as a snapshot of this engine."""
    if conn.engine == "sqlite":
        return f"{q(python)} -c {q(SQLITE_CHECK)} {file}"
    return f"{conn.tool('pg_restore')} --list {file} >/dev/null"


def backup_script(conn: DbConn, python: str, layout: Layout, snapshot_id: str) -> str:
    """Dump to <file>.partial, verify it, then rename it (mtime: when the dump started) and
    write <file>.ok; prints `SNAPSHOT <crc> <size> <started>`, or `NODB` when a SQLite file
    does not exist yet."""
    path = snapshot_path(layout, snapshot_id, conn.engine)
    lines = [*env_lines(conn), f"umask 077 && mkdir -p {q(layout.backups)} || exit 1", f"f={q(path)}",
             'rm -f "$f" "$f.ok" "$f.partial" "$f.err"']
    if conn.engine == "sqlite":
        lines += [
            f"if [ ! -f {q(conn.path)} ]; then echo NODB; exit 0; fi",
            "t=$(date +%s.%N)",
            f'{q(python)} -c {q(SQLITE_COPY)} {q(conn.path)} "$f.partial" || {{ rm -f "$f.partial"; exit 1; }}',
        ]
    else:
        lines += [
            "t=$(date +%s.%N)",
            f'{conn.tool("pg_dump")} --format=custom --file="$f.partial" 2>"$f.err"; rc=$?',
            'if [ $rc -ne 0 ] || [ -s "$f.err" ]; then cat "$f.err" >&2; rm -f "$f.partial" "$f.err"; '
            'echo "pg_dump exited $rc (output on stderr counts as a failure): snapshot discarded" >&2; exit 1; fi',
            'rm -f "$f.err"',
        ]
    return "\n".join(lines + [
        '[ -s "$f.partial" ] || { rm -f "$f.partial"; echo "the snapshot is empty: discarded" >&2; exit 1; }',
        f"{verify_cmd(conn, python, PARTIAL)} "
        '|| { rm -f "$f.partial"; echo "the snapshot does not read back: discarded" >&2; exit 1; }',
        f'mv "$f.partial" "$f" && touch -d "@$t" "$f" && cksum < "$f" > "$f{OK}" && echo "SNAPSHOT $(cat "$f{OK}") $t"',
    ])


def parse_backup(stdout: str, snapshot_id: str, path: str) -> Snapshot | None:
    for line in stdout.splitlines():
        words = line.split()
        if words[:1] == ["SNAPSHOT"] and len(words) == 4:
            return Snapshot(snapshot_id, path, int(words[2]), words[1], float(words[3]))
    return None


def backup_db(remote: Remote, conn: DbConn, python: str, layout: Layout, snapshot_id: str) -> Snapshot | None:
    """Take and verify a snapshot; None when there is no database yet (SQLite file missing)."""
    path = snapshot_path(layout, snapshot_id, conn.engine)
    out = run_with_db(remote, conn, backup_script(conn, python, layout, snapshot_id)).stdout
    if remote.dry_run:
        return Snapshot(snapshot_id, path, 0, "")
    if "NODB" in out.split():
        return None
    snap = parse_backup(out, snapshot_id, path)
    if snap is None:
        raise StepFailed(f"{remote.host}: the backup did not confirm a verified snapshot: {out.strip()[-300:]}")
    return snap


# ---------------------------------------------------------------- listing and removal (which ones: steps/release_log.py)


def list_cmd(layout: Layout) -> str:
    return f"ls -1 {q(layout.backups)} 2>/dev/null || true"


def parse_list(stdout: str, engine: str) -> dict[str, bool]:
    """snapshot id -> verified?, oldest first."""
    names = {line.strip() for line in stdout.splitlines() if line.strip()}
    suffix = SUFFIXES[engine]
    ids = sorted(n[: -len(suffix)] for n in names if n.endswith(suffix))
    return {i: f"{i}{suffix}{OK}" in names for i in ids}


def list_snapshots(remote: Remote, layout: Layout, engine: str) -> dict[str, bool]:
    return parse_list(remote.run(list_cmd(layout), change=False).stdout, engine)


def prune_cmd(layout: Layout, doomed: list[str], engine: str) -> str:
    """rm the doomed snapshots with their .ok, and leftovers of interrupted backups."""
    files = [snapshot_path(layout, i, engine) for i in doomed]
    rm = " ".join(f"{q(f)} {q(f + OK)}" for f in files)
    return f"cd {q(layout.backups)} 2>/dev/null || exit 0; rm -f -- {rm + ' ' if rm else ''}*.partial *.err *.toc"
