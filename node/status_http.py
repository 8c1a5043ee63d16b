"""Read-only HTTP status endpoint: /healthz, /metrics (Prometheus), /jobs. Nothing here changes state.

The server has a fixed pool of worker threads and a bounded queue in front of it (when both are
full a new connection gets 503 at once), and each request has one deadline for arriving whole and
being answered: half-sent requests cannot pile up threads or hold the pool (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

log = logging.getLogger(__name__)


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 30\r\n"
         b"Connection: close\r\n\r\n" b'{"error": "busy, retry later"}')


class PooledHTTPServer(HTTPServer):
    """HTTPServer whose requests run on `workers` threads, with at most as many waiting; each
    request's socket is shut once its deadline (request_timeout_s from accept) has passed."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], workers: int,
                 request_timeout_s: float) -> None:
        super().__init__(address, handler)
        self.request_timeout_s = request_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http")
        self._slots = threading.BoundedSemaphore(2 * workers)
        self._lock = threading.Lock()
        self._deadlines: dict[socket.socket, float] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(0.5)
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        with self._lock:
            self._deadlines[request] = time.monotonic() + self.request_timeout_s
        self._pool.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            log.debug("http request from %s failed", client_address[0], exc_info=True)
        finally:
            with self._lock:
                self._deadlines.pop(request, None)
            self.shutdown_request(request)
            self._slots.release()

    def service_actions(self) -> None:
        """Called by serve_forever at least every 0.5 s: cut requests past their deadline."""
        now = time.monotonic()
        with self._lock:
            late = [sock for sock, deadline in self._deadlines.items() if deadline < now]
        for sock in late:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class StatusServer:
    def __init__(self, bind: str, port: int, health: Callable[[], dict[str, Any]], metrics: Callable[[], str],
                 jobs: Callable[[], list[dict[str, Any]]], workers: int = 4, request_timeout_s: float = 10.0) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "iodine-node"
            timeout = request_timeout_s  # per read; the server also enforces the whole-request deadline

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
        self._server = PooledHTTPServer((bind, port), Handler, workers, request_timeout_s)
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
