"""A tiny HTTP app for the compose stack's example and tests (python3 only, no packages).

GET /health, /ready, /version, / (the version). The release's files decide how it behaves:
VERSION (what /version and / answer), FAIL_READY (if present, /ready answers 503) and
ERROR_RATE (a fraction of `/` requests answered 500, for the error-rate gate).
"""

import http.server
import os
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORT = int(os.environ.get("PORT", "8101"))


def read(name: str, default: str = "") -> str:
    path = HERE / name
    return path.read_text().strip() if path.exists() else default


VERSION = read("VERSION", "dev")
ERROR_RATE = float(read("ERROR_RATE", "0") or 0)
FAIL_READY = (HERE / "FAIL_READY").exists()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status: int, body: str) -> None:
        data = (body + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self.answer(200, "ok")
        elif self.path == "/ready":
            self.answer(503, "not ready") if FAIL_READY else self.answer(200, "ready")
        elif self.path == "/version":
            self.answer(200, VERSION)
        elif random.random() < ERROR_RATE:
            self.answer(500, f"error from {VERSION}")
        else:
            self.answer(200, VERSION)

    def log_message(self, *args: object) -> None:
        pass


http.server.ThreadingHTTPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
