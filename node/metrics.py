"""In-process counters and a histogram, rendered in the Prometheus text format (version 0.0.4)."""

from __future__ import annotations

import threading
from collections.abc import Callable

PROCESSING_BUCKETS_S = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

COUNTERS = {
    "iodine_instances_received_total": "DICOM instances stored (network and watch folder)",
    "iodine_bytes_received_total": "bytes of DICOM instances stored",
    "iodine_instances_refused_total": "instances answered with a failure status",
    "iodine_associations_accepted_total": "DICOM associations accepted",
    "iodine_associations_rejected_total": "DICOM associations rejected",
    "iodine_export_attempts_total": "result objects whose delivery was attempted",
    "iodine_export_failures_total": "delivery attempts that failed (retried or dead letter)",
}


def _num(value: float) -> str:
    """Exact for counts and bytes (Prometheus parses either form)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0.0)
        self._hist_counts = [0] * (len(PROCESSING_BUCKETS_S) + 1)
        self._hist_sum = 0.0
        self._gauges: dict[str, tuple[str, Callable[[], dict[str, float]]]] = {}

    def inc(self, name: str, amount: float = 1.0) -> None:
        with self._lock:
            self._counters[name] += amount

    def value(self, name: str) -> float:
        with self._lock:
            return self._counters[name]

    def observe_processing(self, seconds: float) -> None:
        with self._lock:
            i = next((n for n, b in enumerate(PROCESSING_BUCKETS_S) if seconds <= b), len(PROCESSING_BUCKETS_S))
            self._hist_counts[i] += 1
            self._hist_sum += seconds

    def gauge(self, name: str, help_text: str, read: Callable[[], dict[str, float]]) -> None:
        """A gauge read at scrape time: read() -> {label string ('' for none): value}."""
        self._gauges[name] = (help_text, read)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, help_text in COUNTERS.items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter",
                          f"{name} {_num(self._counters[name])}"]
            name = "iodine_processing_seconds"
            lines += [f"# HELP {name} seconds a quantify job took", f"# TYPE {name} histogram"]
            cumulative = 0
            for bound, count in zip(PROCESSING_BUCKETS_S, self._hist_counts, strict=False):
                cumulative += count
                lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
            cumulative += self._hist_counts[-1]
            lines += [f'{name}_bucket{{le="+Inf"}} {cumulative}', f"{name}_sum {_num(self._hist_sum)}",
                      f"{name}_count {cumulative}"]
        for name, (help_text, read) in self._gauges.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            for labels, value in read().items():
                lines.append(f"{name}{{{labels}}} {_num(value)}" if labels else f"{name} {_num(value)}")
        return "\n".join(lines) + "\n"
