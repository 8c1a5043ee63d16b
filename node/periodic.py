"""A named background thread that runs one step every interval until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `step` every `interval_s` in its own thread; an exception in a step is logged and the
    loop goes on (a background stage must outlive any single bad item)."""

    def __init__(self, name: str, step: Callable[[], object], interval_s: float, initial_delay_s: float = 0.0) -> None:
        self.name = name
        self._step = step
        self._interval_s = interval_s
        self._initial_delay_s = initial_delay_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        if self._initial_delay_s > 0 and self._stop.wait(self._initial_delay_s):
            return
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                log.exception("%s: step failed", self.name)
            self._stop.wait(self._interval_s)
