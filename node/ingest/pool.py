"""Several DICOM listener processes on one port, so concurrent associations use every core.

pynetdicom runs the DICOM protocol in Python, one thread per association: in one process the GIL
keeps all associations on one core. Here `node.listener_processes` processes each run their own
pynetdicom Listener on the same address with SO_REUSEPORT (Linux spreads incoming connections over
them) and all feed the same durable spool and index (SQLite WAL or PostgreSQL; each process has its own
connection and waits on the busy timeout for the write lock).

A listener process is `python -m node.ingest.pool`. It reads one JSON line on stdin (the node
configuration, the storage root, the log set-up) and keeps stdin open: when the service ends, even
by kill -9, the pipe closes and the process stops. It writes JSON lines on stdout: `ready`, a
`status` every second (for /healthz), and `audit` events, which the service writes into its one
audit log. Logs go to stderr, the service's own stream. Metrics: prometheus-client multiprocess
files (node.metrics). A process that dies is started again (with a back-off); until it is back
/healthz reports the listener unhealthy. Guard limits (node.limits, max_associations) apply per
process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from node.config import NodeConfig
from node.net.sockets import reserve_port

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_STATUS_EVERY_S = 1.0
_STALE_S = 10.0


@dataclass(eq=False)
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    ready: threading.Event = field(default_factory=threading.Event)
    status: dict[str, Any] = field(default_factory=dict)
    seen: float = field(default_factory=time.monotonic)
    error: str = ""


class ListenerPool:
    """The service side: starts, watches and stops the listener processes (same interface as Listener)."""

    def __init__(self, config: NodeConfig, processes: int, storage_root: Path, metrics_dir: Path,
                 audit: Any | None = None) -> None:
        self.config, self.processes, self.root, self.metrics_dir = config, processes, storage_root, metrics_dir
        self.audit = audit
        self._children: dict[int, _Child] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reservation: Any = None
        self._port = config.node.port
        self._restarts: list[float] = []
        self._supervisor = threading.Thread()

    @property
    def port(self) -> int:
        return self._port

    def start(self, timeout_s: float = 120.0) -> None:
        node = self.config.node
        # Hold the port (a bound, not listening SO_REUSEPORT socket) so port 0 means one port for all.
        self._reservation = reserve_port(node.bind, node.port)
        self._port = int(self._reservation.getsockname()[1])
        for slot in range(self.processes):
            self._children[slot] = self._spawn(slot)
        deadline = time.monotonic() + timeout_s
        for child in self._children.values():
            while not child.ready.wait(0.2):
                if child.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"listener process {child.slot} did not start: "
                                       f"{child.error or f'exit code {child.proc.poll()}'}")
        self._supervisor = threading.Thread(target=self._watch, name="listener-supervisor", daemon=True)
        self._supervisor.start()
        log.info("listening on %s:%d as %s%s (%d listener processes)", node.bind, self._port, node.ae_title,
                 " (TLS)" if node.tls else "", self.processes)

    def _spawn(self, slot: int) -> _Child:
        level, fmt = _log_setup()
        env = {**os.environ, MULTIPROC_ENV: str(self.metrics_dir)}
        config = self.config.model_copy(update={"node": self.config.node.model_copy(update={"port": self._port})})
        proc = subprocess.Popen([sys.executable, "-m", "node.ingest.pool"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
        child = _Child(slot, proc)
        assert proc.stdin is not None
        hello = {"config": json.loads(config.model_dump_json()), "root": str(self.root), "slot": slot,
                 "log": [level, fmt]}
        proc.stdin.write(json.dumps(hello).encode() + b"\n")
        proc.stdin.flush()  # stdin stays open: its end tells the process to stop
        threading.Thread(target=self._read, args=(child,), name=f"listener-{slot}-events", daemon=True).start()
        return child

    def _read(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        for raw in child.proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue  # not ours (a library printing to stdout)
            child.seen = time.monotonic()
            if "ready" in message:
                child.ready.set()
            elif "status" in message:
                child.status = message["status"]
            elif "audit" in message and self.audit is not None:
                event = message["audit"]
                self.audit.event(event.pop("event"), event.pop("outcome", "success"), **event)
            elif "error" in message:
                child.error = str(message["error"])

    def _watch(self) -> None:
        """Start a listener process again when it dies; back off when it keeps dying."""
        while not self._stopping.wait(0.5):
            for slot, child in list(self._children.items()):
                code = child.proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < 60] + [now]
                log.error("listener process %d (pid %d) ended with exit code %s; starting it again", slot,
                          child.proc.pid, code)
                if self._stopping.wait(min(30.0, 0.5 * 2 ** (len(self._restarts) - 1))):
                    return
                with self._lock:
                    self._children[slot] = self._spawn(slot)

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        errors, associations, negotiating = [], 0, 0
        refused: dict[str, int] = {}
        for slot, child in sorted(self._children.items()):
            st = child.status
            if child.proc.poll() is not None:
                errors.append(f"listener process {slot} is not running (being restarted)")
            elif not child.ready.is_set() or now - child.seen > _STALE_S:
                errors.append(f"listener process {slot} has not reported for {now - child.seen:.0f} s")
            elif not st.get("ok", False):
                errors.append(f"listener process {slot}: {st.get('error', 'not ok')}")
            associations += int(st.get("associations", 0))
            negotiating += int(st.get("negotiating", 0))
            for kind, n in dict(st.get("refused", {})).items():
                refused[kind] = refused.get(kind, 0) + int(n)
        report: dict[str, object] = {
            "ok": not errors and bool(self._children), "processes": len(self._children), "associations": associations,
            "max_associations": self.config.node.max_associations * len(self._children), "negotiating": negotiating,
            "refused": refused}
        if errors:
            report["error"] = "; ".join(errors)
        return report

    def stop(self) -> None:
        self._stopping.set()
        for child in self._children.values():
            with contextlib.suppress(OSError, ValueError):
                assert child.proc.stdin is not None
                child.proc.stdin.close()
        for child in self._children.values():
            try:
                child.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(timeout=5)
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None


def _log_setup() -> tuple[int, str]:
    from node.logs import current_setup

    return current_setup()


# -- the listener process ------------------------------------------------------------------------

class _Out:
    """JSON lines to the service, one writer at a time (association threads write audit events)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream, self._lock = stream, threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, default=str)
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._stream.write(line + "\n")
            self._stream.flush()


class _AuditRelay:
    def __init__(self, out: _Out) -> None:
        self._out = out

    def event(self, event: str, outcome: str = "success", **fields: Any) -> None:
        self._out.send({"audit": {"event": event, "outcome": outcome, "pid": os.getpid(), **fields}})


def child_main() -> int:
    hello = json.loads(sys.stdin.readline())
    from node.logs import setup_logging

    setup_logging(*hello["log"])
    out = _Out(sys.stdout)
    try:
        from node.ingest.ingestor import Ingestor
        from node.ingest.listener import Listener
        from node.ingest.spool import Spool
        from node.metrics import Metrics
        from node.store import open_store

        config = NodeConfig.model_validate(hello["config"])
        root = Path(hello["root"])
        spool, index, metrics = Spool(root), open_store(config), Metrics()
        ingestor = Ingestor(spool, index, int(config.ingest.max_instance_mb * 1e6), config.storage.min_free_gb,
                            metrics)
        listener = Listener(config, ingestor, spool.tmp, metrics, _AuditRelay(out), reuse_port=True)
        listener.start()
    except Exception as exc:
        out.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    out.send({"status": listener.status()})
    out.send({"ready": listener.port, "pid": os.getpid()})
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), name="service-pipe", daemon=True).start()
    while not stop.wait(_STATUS_EVERY_S):
        out.send({"status": listener.status()})
    listener.stop()
    index.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
