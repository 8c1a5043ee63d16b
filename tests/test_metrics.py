"""Metrics through prometheus-client: the names and labels /metrics has always had, and counts that
add up across processes (multiprocess mode, as the listener processes use it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node.metrics import COUNTERS, Metrics, clean_multiprocess_dir
from tests.test_operations import metric

_CHILD = """
from node.metrics import Metrics
m = Metrics()
for _ in range({n}):
    m.inc("iodine_instances_received_total")
    m.inc("iodine_bytes_received_total", 1000)
m.refused("per-host-cap")
m.observe_processing(3.0)
"""


def test_names_types_and_labels() -> None:
    m = Metrics()
    m.inc("iodine_instances_received_total", 2)
    m.observe_processing(4.0)
    m.refused("artim-timeout")
    m.gauge("iodine_jobs", "jobs by state", lambda: {'state="done"': 1.0, 'state="failed"': 0.0})
    m.gauge("iodine_outbox_depth", "result objects waiting for delivery", lambda: {"": 3.0})
    text = m.render()
    for name in COUNTERS:
        assert f"# TYPE {name} counter" in text
    assert metric(text, "iodine_instances_received_total") == 2 and m.value("iodine_instances_received_total") == 2
    assert "# TYPE iodine_processing_seconds histogram" in text
    assert 'iodine_processing_seconds_bucket{le="2.0"} 0.0' in text
    assert 'iodine_processing_seconds_bucket{le="5.0"} 1.0' in text
    assert metric(text, "iodine_processing_seconds_count") == 1
    assert "# TYPE iodine_network_refusals gauge" in text
    assert 'iodine_network_refusals{kind="artim-timeout"} 1.0' in text
    assert 'iodine_jobs{state="done"} 1.0' in text and 'iodine_jobs{state="failed"} 0.0' in text
    assert metric(text, "iodine_outbox_depth") == 3
    assert "_created" not in text  # start times are not additive across processes: left out


def test_counts_add_up_across_processes(tmp_path: Path) -> None:
    directory = clean_multiprocess_dir(tmp_path / "metrics")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for n in (3, 5):
        subprocess.run([sys.executable, "-c", _CHILD.format(n=n)], env=env, check=True, timeout=60)
    main = Metrics(directory)  # this process counts in memory (the service's watch folder, exports)
    main.inc("iodine_instances_received_total", 10)
    main.refused("per-host-cap")
    text = main.render()
    assert metric(text, "iodine_instances_received_total") == 3 + 5 + 10
    assert metric(text, "iodine_bytes_received_total") == 8000
    assert 'iodine_network_refusals{kind="per-host-cap"} 3.0' in text
    assert metric(text, "iodine_processing_seconds_count") == 2
    assert 'iodine_processing_seconds_bucket{le="2.0"} 0.0' in text and 'le="5.0"} 2.0' in text
    # A new start begins from zero: the files of the earlier run are removed.
    clean_multiprocess_dir(directory)
    assert metric(Metrics(directory).render(), "iodine_instances_received_total") == 0
