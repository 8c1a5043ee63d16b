"""Read-only HTTP status endpoint: /healthz, /metrics (Prometheus), /jobs. Nothing here changes state."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


class StatusServer:
    def __init__(self, bind: str, port: int, health: Callable[[], dict[str, Any]], metrics: Callable[[], str],
                 jobs: Callable[[], list[dict[str, Any]]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "iodine-node"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http %s", fmt % args)

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    report = outer.health()
                    self._send(200 if report["status"] == "ok" else 503, json.dumps(report, indent=1).encode(),
                               "application/json")
                elif path == "/metrics":
                    self._send(200, outer.metrics().encode(), "text/plain; version=0.0.4")
                elif path == "/jobs":
                    self._send(200, json.dumps(outer.jobs(), indent=1).encode(), "application/json")
                else:
                    self._send(404, b'{"error": "not found: /healthz, /metrics, /jobs"}', "application/json")

            def _read_only(self) -> None:
                self._send(405, b'{"error": "read-only endpoint"}', "application/json")

            do_POST = do_PUT = do_DELETE = do_PATCH = _read_only

        self.health, self.metrics, self.jobs = health, metrics, jobs
        self._server = ThreadingHTTPServer((bind, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def disk_free_gb(path: Any) -> float:
    return shutil.disk_usage(path).free / 1e9
