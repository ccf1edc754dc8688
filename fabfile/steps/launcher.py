"""The one launcher for commands from hosts.toml run in a release with the app's environment
(migrations, the worker stack's gate/build/smoke/health commands, its daemonized processes).

No shell ever evaluates a .env value: the controller parses the host's .env with
python-dotenv (what the app itself does) and sends the values as one JSON line on stdin to
this tiny Python program on the host, which puts them in os.environ, goes to the release
directory (resolved: `current` is followed once), puts the release's venv first on PATH and
execs `bash -c <command>` (the command is from hosts.toml, trusted). No value is ever on a
command line. stderr joins stdout.

Daemon mode (argv: dir, command, pidfile, logfile): the launcher forks; the child starts a
session of its own (its process group is the worker's), sends its output to `logfile` and
execs the command; the parent writes the child's pid to `pidfile` (temp file + rename) and
prints it.
"""

from __future__ import annotations

import json
import shlex

q = shlex.quote

# argv: dir, command [, pidfile, logfile]. stdin: one JSON line {"env": {...}}.
LAUNCHER = """\
import json, os, sys
env = json.loads(sys.stdin.readline())["env"]
os.environ.update(env)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.dup2(1, 2)
root = os.path.realpath(sys.argv[1])
os.chdir(root)
venv = os.path.join(root, ".venv")
os.environ["VIRTUAL_ENV"] = venv
os.environ["PATH"] = os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "")
if len(sys.argv) > 3:
    pid = os.fork()
    if pid:
        with open(sys.argv[3] + ".tmp", "w") as fh:
            fh.write("%d\\n" % pid)
        os.replace(sys.argv[3] + ".tmp", sys.argv[3])
        print(pid)
        sys.exit(0)
    os.setsid()
    log = os.open(sys.argv[4], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
os.execvp("bash", ["bash", "-c", sys.argv[2]])
"""


def launch_cmd(python: str, directory: str, command: str, daemon: tuple[str, str] | None = None) -> str:
    """`python -c LAUNCHER directory command [pidfile logfile]`, every part quoted."""
    extra = "".join(f" {q(p)}" for p in daemon) if daemon else ""
    return f"{q(python)} -c {q(LAUNCHER)} {q(directory)} {q(command)}{extra}"


def launch_stdin(env: dict[str, str]) -> str:
    """The one JSON line the launcher reads (the environment of the command)."""
    return json.dumps({"env": env}) + "\n"
