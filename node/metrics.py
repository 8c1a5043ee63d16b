"""The node's Prometheus metrics, kept by prometheus-client in a registry of their own (never the
library's global one) and rendered in the text exposition format.

Several listener processes (node.ingest.pool) count in prometheus-client's multiprocess mode: a
process started with PROMETHEUS_MULTIPROC_DIR in its environment keeps its values in files there,
and the main process adds them to its own at every scrape, sample by sample, so counters add up
across processes and across restarts of a listener process (a dead process's files stay).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

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
REFUSALS = "iodine_network_refusals"

GaugeReader = Callable[[], dict[str, float]]


class _ScrapeGauges(Collector):
    """Gauges read at scrape time: read() -> {label string ('' or 'name="value"'): value}."""

    def __init__(self) -> None:
        self.gauges: dict[str, tuple[str, GaugeReader]] = {}

    def collect(self) -> Iterable[Metric]:
        for name, (help_text, read) in list(self.gauges.items()):
            values = read()
            labelnames = sorted({part.split("=", 1)[0] for labels in values if labels for part in labels.split(",")})
            family = GaugeMetricFamily(name, help_text, labels=labelnames or None)
            for labels, value in values.items():
                pairs = dict(part.split("=", 1) for part in labels.split(",")) if labels else {}
                family.add_metric([pairs[n].strip('"') for n in labelnames], value)
            yield family


class _Merged(Collector):
    """This process's registry plus the files other processes wrote to the multiprocess directory,
    summed sample by sample (same name and labels; `_created` start times are left out). This
    process's own files, if it counts in multiprocess mode too, are left out: its registry already
    holds those values."""

    def __init__(self, registry: CollectorRegistry, directory: Path | None) -> None:
        self.registry, self.directory = registry, directory

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        totals: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        sources: list[Iterable[Metric]] = [self.registry.collect()]
        if self.directory is not None and self.directory.is_dir():
            mine = f"_{os.getpid()}.db"
            files = [str(p) for p in self.directory.glob("*.db") if not p.name.endswith(mine)]
            sources.append(MultiProcessCollector.merge(files, accumulate=True))
        for source in sources:
            for family in source:
                families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for s in family.samples:
                    if s.name.endswith("_created"):  # a start time: not additive across processes
                        continue
                    key = (family.name, s.name, tuple(sorted(s.labels.items())))
                    totals[key] = totals.get(key, 0.0) + s.value
        for (family_name, sample_name, labels), value in totals.items():
            families[family_name].add_sample(sample_name, dict(labels), value)
        yield from families.values()


class Metrics:
    """Counters, the processing histogram, the refusal gauge and scrape-time gauges of one process.
    `multiprocess_dir`: where listener processes keep theirs (read at render time)."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._counters = {name: Counter(name, text, registry=self.registry) for name, text in COUNTERS.items()}
        self._processing = Histogram("iodine_processing_seconds", "seconds a quantify job took",
                                     buckets=PROCESSING_BUCKETS_S, registry=self.registry)
        # A count that only grows, but a gauge since its first version: the type and name stay.
        self._refusals = Gauge(REFUSALS, "connections the listener's guard refused, by kind", ["kind"],
                               registry=self.registry, multiprocess_mode="sum")
        self._gauges = _ScrapeGauges()
        self.registry.register(self._gauges)
        self._exposition = CollectorRegistry(auto_describe=False)
        self._exposition.register(_Merged(self.registry, multiprocess_dir))

    def inc(self, name: str, amount: float = 1.0) -> None:
        self._counters[name].inc(amount)

    def value(self, name: str) -> float:
        """This process's count (not other processes')."""
        return float(self.registry.get_sample_value(name) or 0.0)

    def observe_processing(self, seconds: float) -> None:
        self._processing.observe(seconds)

    def refused(self, kind: str) -> None:
        """One connection refused by the listener's guard (node.ingest.guard_log.Refusals)."""
        self._refusals.labels(kind=kind).inc()

    def gauge(self, name: str, help_text: str, read: GaugeReader) -> None:
        """A gauge read at scrape time: read() -> {label string ('' for none): value}."""
        self._gauges.gauges[name] = (help_text, read)

    def render(self) -> str:
        with self._lock:
            return generate_latest(self._exposition).decode("utf-8")


def clean_multiprocess_dir(directory: Path) -> Path:
    """An empty directory for PROMETHEUS_MULTIPROC_DIR: files of an earlier run would count twice."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db"):
        old.unlink(missing_ok=True)
    return directory
