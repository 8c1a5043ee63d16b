"""Watch folder: files dropped by a USB import, a share or another tool enter the spool exactly
like network instances, once they are fully written (size and mtime unchanged for a settle time).

watchdog wakes the scanner early; a periodic scan also catches files already present at start
and events a network file system never delivers.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from node.ingest.ingestor import OUT_OF_RESOURCES, IngestError, Ingestor
from node.ingest.spool import Spool

log = logging.getLogger(__name__)

_PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".filepart")


class _Wake(FileSystemEventHandler):
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        self._event.set()


class WatchFolder:
    def __init__(self, watch_dir: Path, spool: Spool, ingestor: Ingestor, settle_s: float,
                 rescan_s: float = 5.0) -> None:
        self.watch_dir = watch_dir
        self.spool = spool
        self.ingestor = ingestor
        self.settle_s = settle_s
        self.rescan_s = rescan_s
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, first seen so)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._observer = Observer()
        self._thread = threading.Thread(target=self._loop, name="watch-folder", daemon=True)

    def start(self) -> None:
        self.watch_dir.mkdir(parents=True, exist_ok=True)
        self._observer.schedule(_Wake(self._wake), str(self.watch_dir), recursive=True)
        self._observer.start()
        self._thread.start()
        log.info("watching %s for DICOM files", self.watch_dir)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan_once()
            except Exception:
                log.exception("watch folder scan failed")
            # Wake on an event, but re-check pending files at least every settle interval.
            self._wake.wait(min(self.rescan_s, self.settle_s / 2 if self._seen else self.rescan_s))
            self._wake.clear()

    def scan_once(self, now: float | None = None) -> int:
        """Take in every file that has been stable for the settle time; returns how many."""
        now = time.monotonic() if now is None else now
        present = set()
        taken = 0
        for path in sorted(self.watch_dir.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.name.lower().endswith(_PARTIAL_SUFFIXES):
                continue
            present.add(path)
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
            previous = self._seen.get(path)
            if previous is None or previous[:2] != key:
                self._seen[path] = (*key, now)
                continue
            if now - previous[2] < self.settle_s:
                continue
            self._take(path)
            self._seen.pop(path, None)
            taken += 1
        for gone in set(self._seen) - present:
            self._seen.pop(gone, None)
        return taken

    def _take(self, path: Path) -> None:
        staged = self.spool.new_temp_path()
        try:
            shutil.copyfile(path, staged)
            outcome = self.ingestor.ingest(staged, source="watch")
        except IngestError as exc:
            if exc.status == OUT_OF_RESOURCES:  # disk full, I/O error, study being deleted: not the file's fault
                log.warning("watch folder: %s not taken yet: %s; will retry", path.name, exc.reason)
                return
            target = self.spool.quarantine(path, f"{path.name}: {exc.reason}")
            log.warning("watch folder: %s quarantined as %s: %s", path.name, target.name, exc.reason)
            return
        except Exception:
            log.exception("watch folder: could not take %s; will retry", path.name)
            return
        finally:
            staged.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        log.info("watch folder: took instance %s%s", outcome.record.sop_instance_uid,
                 "" if outcome.stored else " (duplicate)")
