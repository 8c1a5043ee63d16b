"""Test-only crash hooks: `IODINE_NODE_CRASH_AT=<point>[:<n>]` makes the node die by SIGKILL the n-th
time (default: first) execution passes `crash_point(<point>)`.

This exists only so tests can kill -9 `serve` at exact places (between an fsync and an
acknowledgement, between publishing results and committing the outbox, ...) and check that a
restart loses nothing accepted and sends nothing twice. Unset in production, it costs one dict
lookup. In a worker process the hook kills the parent (`serve`) and then blocks, as a worker busy
with a job would: only the worker's own parent-death watchdog (node.jobs) can end it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

CRASH_ENV = "IODINE_NODE_CRASH_AT"

_lock = threading.Lock()
_hits: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or 1)


def crash_point(name: str) -> None:
    """SIGKILL `serve` here if the environment asks for it (tests only)."""
    target = _target()
    if target is None or target[0] != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] != target[1]:
            return
    if multiprocessing.parent_process() is not None:  # a worker: kill `serve`, not ourselves
        os.kill(os.getppid(), signal.SIGKILL)
        threading.Event().wait()
    os.kill(os.getpid(), signal.SIGKILL)
