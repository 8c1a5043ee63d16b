"""Service log set-up, shared by the main process and the spawned job workers (so a worker's
lines reach the same stream in the same format)."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str | int, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()) if isinstance(level, str) else level,
                        handlers=[handler], force=True)
    for chatty in ("pynetdicom", "highdicom"):  # a line per association event / copied attribute group
        logging.getLogger(chatty).setLevel(logging.WARNING)


def current_setup() -> tuple[int, str]:
    """(level, "json" or "text") of this process' root logger, to repeat in a worker."""
    root = logging.getLogger()
    json_format = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return root.level, "json" if json_format else "text"
