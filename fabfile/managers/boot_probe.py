"""The program the boot check runs on the host (its source is sent as `python -c`; never
imported by shipfab): in the release directory, with the release's own python, import the
WSGI app as gunicorn would (`gunicorn.util.import_app`), then call it in process for a GET
of the health URL. Prints one JSON line on stdout, `BOOT_RESULT {status, body, seconds}`
or `BOOT_ERROR {phase, error, trace, seconds}`; the app's own output goes to stderr.

argv: app_module, import_seconds, request_seconds; stdin: the URL (it may hold a secret).
Standard library only (+ gunicorn).
"""

import json
import os
import signal
import sys
import time
import traceback
from urllib.parse import unquote, urlsplit
from wsgiref.util import setup_testing_defaults

BODY_LIMIT = 65536


class BootTimeout(BaseException):
    """Not an Exception: the app's own error handlers (a Flask 500 page) must not catch it."""


def _time_limit(seconds: float, what: str) -> None:
    def expired(signum, frame):
        raise BootTimeout(f"{what} took longer than {seconds:g} s")

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _environ(url: str) -> dict:
    parts = urlsplit(url)
    scheme = parts.scheme or "http"
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(parts.path or "/", encoding="latin-1"),
        "QUERY_STRING": parts.query,
        "SERVER_NAME": parts.hostname or "localhost",
        "SERVER_PORT": str(parts.port or (443 if scheme == "https" else 80)),
        "HTTP_HOST": parts.netloc.rpartition("@")[2] or "localhost",
        "HTTP_USER_AGENT": "shipfab-boot-check",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": scheme,
    }
    setup_testing_defaults(environ)
    return environ


def _call(app, environ: dict) -> tuple[int, str]:
    status: list[str] = []
    chunks: list[bytes] = []

    def start_response(line, headers, exc_info=None):
        status[:] = [line]
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return int(status[0].split()[0]), b"".join(chunks)[:BODY_LIMIT].decode("utf-8", "replace")


def _describe(exc: BaseException) -> dict:
    """The exception line, and the last frames outside Python's own import machinery."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    only = [line.rstrip() for line in traceback.format_exception_only(exc)]
    trace = [f"{f.filename}:{f.lineno} in {f.name}: {f.line}" for f in frames[-4:]]
    return {"error": only[-1].strip(), "trace": trace + only[:-1]}  # a SyntaxError's file, line and caret


def main() -> str:
    module, import_seconds, request_seconds = sys.argv[1:4]
    url = sys.stdin.readline().rstrip("\n")
    started = time.monotonic()
    phase = "import"
    try:
        sys.path.insert(0, os.getcwd())  # like gunicorn --chdir
        _time_limit(float(import_seconds), f"importing {module}")
        from gunicorn.util import import_app

        app = import_app(module)
        phase = "request"
        environ = _environ(url)
        _time_limit(float(request_seconds), f"GET {environ['PATH_INFO']}")
        status, body = _call(app, environ)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException:  # the app's own failure, whatever it is, is the answer
        signal.setitimer(signal.ITIMER_REAL, 0)
        info = {"phase": phase, **_describe(sys.exc_info()[1]), "seconds": time.monotonic() - started}
        return "BOOT_ERROR " + json.dumps(info)
    return "BOOT_RESULT " + json.dumps({"status": status, "body": body, "seconds": time.monotonic() - started})


if __name__ == "__main__":
    real_stdout, sys.stdout = sys.stdout, sys.stderr
    real_stdout.write(main() + "\n")
    real_stdout.flush()
    os._exit(0)  # threads the app started must not keep the check alive
