"""One log line per refused input (docs/security.md): the guard's refusal log with its flood
summary, and the filters that keep pynetdicom's and pydicom's tracebacks and raw peer values
(newlines included) out of the service log."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

log = logging.getLogger("node.ingest.guard")

quiet = threading.local()  # set in a thread whose connection the guard has already reported


class Refusals:
    """Counts refusals by kind and logs one line per refusal, naming the peer and the reason. A
    flood from one host is summarised (at most one line a second per kind and host)."""

    def __init__(self, on_note: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._on_note = on_note  # e.g. the metrics' refusal gauge

    def note(self, kind: str, peer: tuple[str, int] | Any, reason: str, level: int = logging.WARNING) -> None:
        host, port = (peer[0], peer[1]) if isinstance(peer, tuple) else (str(peer), 0)
        now = time.monotonic()
        if self._on_note is not None:
            self._on_note(kind)
        with self._lock:
            self.counts[kind] += 1
            if len(self._last) > 10000:
                self._last.clear()
            last, suppressed = self._last.get((kind, host), (-1e9, 0))
            if now - last < 1.0:
                self._last[(kind, host)] = (last, suppressed + 1)
                return
            self._last[(kind, host)] = (now, 0)
        more = f" (and {suppressed} more like it from this host in the last {now - last:.0f} s)" if suppressed else ""
        log.log(level, "refused connection from %s:%s: %s: %s%s", host, port, kind, reason, more)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class _CompactRecords(logging.Filter):
    """pynetdicom and pydicom log whole tracebacks and raw peer values (newlines included) for
    input they cannot decode: make each record one line, and drop what a thread logs after the
    guard has already reported its connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(quiet, "on", False):
            return False
        message = record.getMessage()
        if record.name == "pynetdicom.utils" and message.startswith("Invalid '"):
            return False  # a UID or AE value pynetdicom refuses: the caller reports it once, with context
        if record.name.startswith("pydicom") and isinstance(threading.current_thread(), DULServiceProvider):
            return False  # pydicom's opinion of a peer's command set values: the refusal says what matters
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            detail = f"{type(exc).__name__}: {exc}"
            message = detail if message == str(exc) else f"{message} ({detail})"
        if not message.isprintable():  # a peer's value with a newline must not forge a log line
            message = message.encode("unicode_escape").decode("ascii")
        record.msg = message[:500]
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


_FILTER = _CompactRecords()


def compact_library_logs() -> None:
    """Install the one-line filter on pynetdicom's and pydicom's loggers (idempotent; called when
    the listener starts, not at import). pydicom also repeats each of its warnings through the
    warnings module, as a two-line message on stderr per distinct peer value: those are dropped
    (the logger keeps them, one line each)."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in ("pynetdicom", "pydicom")]
    for name in {"pynetdicom", "pydicom", *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    if not getattr(threading.excepthook, "iodine_compact", False):
        threading.excepthook = _compact_excepthook(threading.excepthook)


def _compact_excepthook(previous: Any) -> Any:
    """An exception escaping a pynetdicom reactor thread (its state machine does not catch all
    of them) is one log line naming the peer, not a traceback on stderr; other threads as before."""

    def hook(args: threading.ExceptHookArgs) -> None:
        thread = args.thread
        if isinstance(thread, (DULServiceProvider, Association)) and args.exc_value is not None:
            assoc = thread.assoc if isinstance(thread, DULServiceProvider) else thread
            peer = getattr(assoc.requestor, "address", "?")
            text = str(args.exc_value)[:200].encode("unicode_escape").decode("ascii")
            log.warning("connection from %s ended by an error in pynetdicom's %s: %s: %s", peer,
                        type(thread).__name__, args.exc_type.__name__, text)
            return
        previous(args)

    hook.iodine_compact = True  # type: ignore[attr-defined]
    return hook
