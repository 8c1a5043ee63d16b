"""Append-only audit trail of security-relevant events, as JSON lines, rotated by size.

Event types follow IHE ATNA (RFC 3881 / DICOM PS3.15 A.5) categories: Application Activity
(node started, configuration loaded), Security Alert (association rejected), Begin Transferring /
Instances Transferred (association accepted, instances stored per study, results exported),
User Authentication is not applicable (no users); job retried by an operator. Identifiers only
(AE titles, addresses, UIDs, job ids): never patient names.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import time
from pathlib import Path
from typing import Any

from node.fsutil import fsync_file


class AuditLog:
    def __init__(self, path: Path, max_mb: float, keep: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._logger = logging.getLogger(f"iodine-node.audit.{path}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        if not self._logger.handlers:
            handler = logging.handlers.RotatingFileHandler(path, maxBytes=int(max_mb * 1e6), backupCount=keep,
                                                           encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._logger.addHandler(handler)

    def event(self, event: str, outcome: str = "success", **fields: Any) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, "outcome": outcome,
                  "pid": os.getpid(), **fields}
        self._logger.info(json.dumps(record, ensure_ascii=False, default=str))
        for handler in self._logger.handlers:
            handler.flush()

    def close(self) -> None:
        for handler in list(self._logger.handlers):
            handler.close()
            self._logger.removeHandler(handler)


def append_event(path: Path, event: str, **fields: Any) -> None:
    """One audit line from another process (the CLI), fsynced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, "outcome": "success",
              "pid": os.getpid(), **fields}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    fsync_file(path)
