"""cron: the app's entries, in a block between `# shipfab:<app> begin` / `# shipfab:<app> end`
markers of the deploy user's crontab (or a crontab file given in hosts.toml). Pure functions
render and replace the block; every other line of the crontab is kept byte for byte.

Entries always point at `current`: `cd <deploy_to>/current && PATH=<current>/.venv/bin:$PATH <command>`,
so a switch (or a rollback) moves them with no rewrite. `%` is escaped (cron turns it into a
newline). The app reads its own .env, as it does when run by hand: cron's shell never
evaluates one.
"""

from __future__ import annotations

import shlex

from ..inventory import CronEntry
from ..layout import Layout
from ..remote import Remote

q = shlex.quote
NO_CRONTAB = "__SHIPFAB_NO_CRONTAB__"


def markers(app: str) -> tuple[str, str]:
    return f"# shipfab:{app} begin", f"# shipfab:{app} end"


def entry_line(layout: Layout, entry: CronEntry) -> str:
    """One crontab line running `entry.command` in `current` with current's venv first on PATH."""
    cur = layout.current
    line = f"{entry.schedule} cd {q(cur)} && PATH={q(cur + '/.venv/bin')}:\"$PATH\" {entry.command}"
    return line.replace("%", "\\%")


def render_block(app: str, layout: Layout, entries: tuple[CronEntry, ...] | list[CronEntry]) -> str:
    """The block (markers included, newline-terminated); "" when there are no entries."""
    if not entries:
        return ""
    begin, end = markers(app)
    return "\n".join([begin, *(entry_line(layout, e) for e in entries), end]) + "\n"


def _span(text: str, app: str) -> tuple[int, int] | None:
    """Character offsets of the block (from its begin line to the end of its end line)."""
    begin, end = markers(app)
    lines = text.splitlines(keepends=True)
    pos, start = 0, None
    for line in lines:
        bare = line.rstrip("\r\n")
        if start is None and bare == begin:
            start = pos
        elif start is not None and bare == end:
            return start, pos + len(line)
        pos += len(line)
    return None


def extract_block(text: str, app: str) -> str:
    """The app's block exactly as it is in `text` ("" when there is none)."""
    span = _span(text, app)
    return text[span[0]:span[1]] if span else ""


def replace_block(text: str, app: str, block: str) -> str:
    """`text` with the app's block replaced by `block` (in place), appended when it had none,
    removed when `block` is "". Every other byte is kept."""
    span = _span(text, app)
    if span:
        return text[:span[0]] + block + text[span[1]:]
    if not block:
        return text
    return text + ("\n" if text and not text.endswith("\n") else "") + block


def read_cmd(crontab: str) -> str:
    """Print the crontab (a file, or the user's: `crontab -l`); NO_CRONTAB when there is none."""
    if crontab:
        return f"if [ -f {q(crontab)} ]; then cat {q(crontab)}; else echo {NO_CRONTAB}; fi"
    return (f"e=$(mktemp) || exit 1; if crontab -l 2>\"$e\"; then rm -f \"$e\"; "
            f"elif grep -qi 'no crontab' \"$e\"; then rm -f \"$e\"; echo {NO_CRONTAB}; "
            "else cat \"$e\" >&2; rm -f \"$e\"; exit 1; fi")


def write_cmd(crontab: str) -> str:
    """Install the text on stdin as the crontab (a file: written beside it, then renamed)."""
    if crontab:
        tmp = f"{crontab}.shipfab-tmp"
        return f"mkdir -p {q(crontab.rsplit('/', 1)[0] or '/')} && cat > {q(tmp)} && mv -f {q(tmp)} {q(crontab)}"
    return "crontab -"


def parse_read(stdout: str) -> str | None:
    """The crontab text (None: there is no crontab at all)."""
    return None if stdout.strip() == NO_CRONTAB else stdout


def read_crontab(remote: Remote, crontab: str) -> str | None:
    return parse_read(remote.run(read_cmd(crontab), change=False, show_output=False).stdout)


def write_crontab(remote: Remote, crontab: str, text: str) -> None:
    remote.run(write_cmd(crontab), stdin=text, show_output=False)


def install_block(remote: Remote, crontab: str, app: str, block: str) -> tuple[str | None, str]:
    """Put `block` in place of the app's block; returns (the crontab before, its block before).
    Nothing is written when the block is already there."""
    before = read_crontab(remote, crontab)
    text = before or ""
    old = extract_block(text, app)
    if old != block:
        write_crontab(remote, crontab, replace_block(text, app, block))
    return before, old


def stored_path(layout: Layout, release_id: str) -> str:
    """The exact block that goes with a release (what rollback and undo put back)."""
    return f"{layout.release(release_id)}/.shipfab-cron"


def read_stored(remote: Remote, layout: Layout, release_id: str) -> str | None:
    path = stored_path(layout, release_id)
    out = remote.run(f"if [ -f {q(path)} ]; then cat {q(path)}; else echo {NO_CRONTAB}; fi", change=False,
                     show_output=False).stdout
    return parse_read(out)


def store(remote: Remote, layout: Layout, release_id: str, block: str) -> None:
    path = stored_path(layout, release_id)
    remote.run(f"[ -d {q(layout.release(release_id))} ] || exit 0; cat > {q(path + '.tmp')} && mv -f {q(path + '.tmp')} "
               f"{q(path)}", stdin=block, show_output=False)


def remove_cmd(crontab: str) -> str:
    """No crontab at all (what there was before the first block)."""
    return f"rm -f {q(crontab)}" if crontab else "crontab -r 2>/dev/null || true"
