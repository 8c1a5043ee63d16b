"""Several scanners at once: listener processes sharing the port (node.ingest.pool), metrics that
add up across them (prometheus-client multiprocess mode), a dead listener process started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.peers import PEER_ENV, NodeProcess, pid_children, require_tool, wait_for
from tests.test_operations import metric

pytestmark = pytest.mark.peer

STUDIES = 4


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, list[Path]]]:
    """Four small studies of four patients: one phantom, copied with new patient, study, series and
    SOP Instance UIDs (generating four phantoms would take a minute)."""
    from node.phantom import PhantomOptions, generate_phantom

    base = generate_phantom(tmp_path_factory.mktemp("phantom"), PhantomOptions(seed=11))
    out = []
    for n in range(STUDIES):
        folder = tmp_path_factory.mktemp(f"study{n}")
        study_uid = pydicom.uid.generate_uid(prefix="2.25.")
        series: dict[str, str] = {}
        files = []
        for i, path in enumerate(base.files):
            ds = pydicom.dcmread(path)
            ds.PatientID = f"THROUGHPUT{n}"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, pydicom.uid.generate_uid(prefix="2.25."))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(prefix="2.25.")
            target = folder / f"{i:04d}.dcm"
            ds.save_as(target, enforce_file_format=True)
            files.append(target)
        out.append((study_uid, files))
    return out


def _audit(n: NodeProcess) -> list[dict]:
    path = n.root / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _listener_pids(n: NodeProcess) -> set[int]:
    assert n.proc is not None
    return {pid for pid in pid_children(n.proc.pid)
            if b"node.ingest.pool" in Path(f"/proc/{pid}/cmdline").read_bytes()}


def _healthy_listener(n: NodeProcess) -> dict:
    """The listener check of /healthz once the whole service is up (the first listener process logs
    "listening on" before the others and the service are ready)."""
    def check() -> dict | None:
        status, body = n.http_get("/healthz")
        return json.loads(body)["checks"]["listener"] if status == 200 else None

    return wait_for(check, 60, "a healthy node")


def test_four_concurrent_storescu_on_two_listener_processes(node, studies) -> None:
    n = node({"node": {"listener_processes": 2, "max_associations": 8},
              "processing": {"workers": 1}, "storage": {"min_free_gb": 0.0}})
    listener = _healthy_listener(n)
    assert listener["processes"] == 2 and listener["max_associations"] == 16
    assert len(_listener_pids(n)) == 2
    storescu = require_tool("storescu")
    pushes = [subprocess.Popen([storescu, "-aet", f"SCANNER{i}", "-aec", n.ae_title, "127.0.0.1", str(n.port),
                                *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=PEER_ENV)
              for i, (_, files) in enumerate(studies)]
    outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in pushes]
    for p, out in zip(pushes, outputs, strict=True):
        assert p.returncode == 0, out
    total = sum(len(files) for _, files in studies)
    # Every acknowledged instance stored once and indexed.
    assert n.instance_count() == total
    for study_uid, files in studies:
        assert n.instance_count(study_uid) == len(files)
    stored = list((n.root / "studies").rglob("*.dcm"))
    assert len(stored) == total and len({p.name for p in stored}) == total
    assert not list((n.root / "spool" / "tmp").iterdir())  # no partial file left behind
    # One job per study, however the associations were spread over the processes.
    rows = wait_for(lambda: (lambda r: r if len(r) == STUDIES else None)(
        n.db("SELECT study_uid, COUNT(*) AS jobs FROM jobs GROUP BY study_uid")), 120, "a job for every study")
    assert {r["study_uid"]: r["jobs"] for r in rows} == {uid: 1 for uid, _ in studies}
    # The metrics add up across the listener processes.
    text = n.http_get("/metrics")[1]
    assert metric(text, "iodine_instances_received_total") == total
    assert metric(text, "iodine_bytes_received_total") == n.db("SELECT SUM(size_bytes) FROM instances")[0][0]
    assert metric(text, "iodine_associations_accepted_total") == STUDIES
    # Associations go on until both processes have served one (SO_REUSEPORT spreads by a hash of the
    # 4-tuple: all on one process is possible for a few); the count still adds up exactly.
    echoes = 0

    def both_served() -> bool:
        nonlocal echoes
        pids = {e["pid"] for e in _audit(n) if e["event"] == "association-accepted"}
        if len(pids) >= 2:
            return True
        assert n.echoscu().returncode == 0
        echoes += 1
        return False

    wait_for(both_served, 120, "associations on both listener processes")
    accepted = [e for e in _audit(n) if e["event"] == "association-accepted"]
    assert {e["pid"] for e in accepted} == _listener_pids(n)
    assert len(accepted) == STUDIES + echoes
    assert metric(n.http_get("/metrics")[1], "iodine_associations_accepted_total") == STUDIES + echoes


def test_a_dead_listener_process_is_started_again(node, studies) -> None:
    n = node({"node": {"listener_processes": 2}, "processing": {"workers": 1}, "storage": {"min_free_gb": 0.0}})
    _healthy_listener(n)
    before = _listener_pids(n)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "ended with exit code -9; starting it again" in n.log(), 30, "the supervisor to notice")
    after = wait_for(lambda: (lambda p: p if len(p) == 2 and victim not in p else None)(_listener_pids(n)), 60,
                     "a new listener process")
    assert before - {victim} <= after
    assert _healthy_listener(n)["ok"]
    _, files = studies[0]
    assert n.storescu(files[:5]).returncode == 0
    assert n.instance_count() == 5


def test_one_listener_process_keeps_the_single_process_service(node) -> None:
    n = node({"node": {"listener_processes": 1}, "storage": {"min_free_gb": 0.0}})
    assert "processes" not in _healthy_listener(n)
    assert not _listener_pids(n)
    assert n.echoscu().returncode == 0


def test_export_spreads_a_large_batch_over_associations(tmp_path: Path, studies) -> None:
    """destinations[].associations: 2 -> two associations at once, each object delivered once."""
    import threading

    from node.config import parse_config
    from node.export.base import Parcel
    from node.export.dicom import DicomTarget
    from tests.peers import Orthanc

    _, files = studies[0]
    batch = files[:40]
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"node": ["IODINE_NODE", "127.0.0.1", 1]}).start()
    try:
        config = parse_config({"destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                                                 "port": orthanc.dicom_port, "associations": 2}]})
        reported: list[tuple[int, str, str]] = []
        outcomes = DicomTarget(config.destinations[0], config).send(
            [Parcel(i, f, "", "", "") for i, f in enumerate(batch)],
            lambda item, outcome: reported.append((item, outcome.state, threading.current_thread().name)))
        assert {o.state for o in outcomes.values()} == {"delivered"} and len(outcomes) == len(batch)
        assert sorted(item for item, _, _ in reported) == list(range(len(batch)))  # each reported once
        assert len({thread for _, _, thread in reported}) == 2  # two associations, one thread each
        held = {orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances")}
        assert held == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in batch}
    finally:
        orthanc.stop()
