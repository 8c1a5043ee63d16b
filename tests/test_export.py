"""Export to a real Orthanc PACS: C-STORE, STOW-RS, outages, dead letters, crash before delivery."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.peers import NodeProcess, Orthanc, StoreSCP, free_port, wait_for

pytestmark = pytest.mark.peer  # every test runs node processes and Orthanc, or the demo's node

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
FAST_RETRY = {"retry": {"first_s": 0.3, "max_s": 1.0, "give_up_after_h": 24}, "poll_s": 0.2}


@pytest.fixture(scope="module")
def study(phantom_factory):
    return phantom_factory(seed=11, noise=0.15)  # made once per session (tests/test_ingest.py's too)


def pacs_for(node: NodeProcess, orthanc: Orthanc, **extra: object) -> dict:
    return {"destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                              "port": orthanc.dicom_port, **extra}], "export": FAST_RETRY}


def result_classes(orthanc: Orthanc, study_uid: str) -> list[str]:
    return sorted(i["SOPClassUID"] for i in orthanc.study_instances(study_uid)
                  if i["SOPClassUID"] in (SEG, SR_3D, SC))


def test_results_reach_orthanc_in_the_same_study(peers, study) -> None:
    make_orthanc, make_node = peers
    n = make_node()
    orthanc = make_orthanc(modalities={"node": [n.ae_title, "127.0.0.1", n.port]})
    n.config_path.write_text(yaml.safe_dump({**yaml.safe_load(n.config_path.read_text()), **pacs_for(n, orthanc)}))
    orthanc.start()
    n.start()
    assert n.storescu(study.files).returncode == 0
    uid = study.truth["study_instance_uid"]
    wait_for(lambda: result_classes(orthanc, uid) == sorted([SEG, SR_3D, SC]), 300, "SEG, SR and SC in Orthanc")
    instances = {i["SOPClassUID"]: i for i in orthanc.study_instances(uid)}
    for cls in (SEG, SR_3D, SC):
        tags = orthanc.get(f"/instances/{instances[cls]['id']}/tags?simplify")  # Orthanc parsed them
        assert tags["StudyInstanceUID"] == uid and tags["PatientID"] == study.truth["patient"]["id"]
    status, png = orthanc.get_bytes(f"/instances/{instances[SC]['id']}/preview")
    assert status == 200 and png[:4] == b"\x89PNG"  # Orthanc decodes the summary page
    rows = n.db("SELECT state, destination FROM outbox")
    assert len(rows) == 3 and {r["state"] for r in rows} == {"delivered"}
    wait_for(lambda: "delivered 3 object(s) of study" in n.log() and "to pacs" in n.log(), 10, "the delivery log")


def test_orthanc_down_then_up(peers, study) -> None:
    make_orthanc, make_node = peers
    n = make_node()
    orthanc = make_orthanc(modalities={"node": [n.ae_title, "127.0.0.1", n.port]})  # not started yet
    n.config_path.write_text(yaml.safe_dump({**yaml.safe_load(n.config_path.read_text()), **pacs_for(n, orthanc)}))
    n.start()
    assert n.storescu(study.files).returncode == 0
    wait_for(lambda: [r for r in n.db("SELECT * FROM outbox") if r["attempts"] >= 2], 300, "failed attempts")
    assert all(r["state"] == "pending" for r in n.db("SELECT * FROM outbox"))
    wait_for(lambda: "cannot connect" in n.log(), 10, "the connection failure in the log")
    orthanc.start()
    uid = study.truth["study_instance_uid"]
    wait_for(lambda: result_classes(orthanc, uid) == sorted([SEG, SR_3D, SC]), 120, "delivery after Orthanc starts")
    wait_for(lambda: {r["state"] for r in n.db("SELECT state FROM outbox")} == {"delivered"}, 60, "outbox done")


def test_wrong_port_dead_letter_then_retry_after_fix(peers, study) -> None:
    make_orthanc, make_node = peers
    n = make_node()
    orthanc = make_orthanc(modalities={"node": [n.ae_title, "127.0.0.1", n.port]})
    orthanc.start()
    wrong = {"destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": free_port()}],
             "export": {"retry": {"first_s": 0.3, "max_s": 0.6, "give_up_after_h": 0.001}, "poll_s": 0.2}}
    base = yaml.safe_load(n.config_path.read_text())
    n.config_path.write_text(yaml.safe_dump({**base, **wrong}))
    n.start()
    assert n.storescu(study.files).returncode == 0
    rows = wait_for(lambda: (lambda dead: dead if len(dead) == 3 else None)(
        [r for r in n.db("SELECT * FROM outbox") if r["state"] == "dead"]), 300, "three dead letters")
    assert "gave up after" in rows[0]["last_error"] and "cannot connect" in rows[0]["last_error"]
    job_id = rows[0]["job_id"]
    listing = n.cli("jobs")
    assert "-> pacs: 3 dead" in listing.stdout and "last error: gave up" in listing.stdout
    n.stop()
    n.config_path.write_text(yaml.safe_dump({**base, **pacs_for(n, orthanc)}))  # fix the port
    n.start()
    retry = n.cli("jobs", "retry", str(job_id))
    assert retry.returncode == 0 and "3 dead-letter delivery(ies) queued again" in retry.stdout
    uid = study.truth["study_instance_uid"]
    wait_for(lambda: result_classes(orthanc, uid) == sorted([SEG, SR_3D, SC]), 60, "delivery after the fix")


def test_rejected_called_ae_is_dead_at_once(peers, study) -> None:
    make_orthanc, make_node = peers
    n = make_node()
    orthanc = make_orthanc(modalities={"node": [n.ae_title, "127.0.0.1", n.port]})
    orthanc.start()
    cfg = pacs_for(n, orthanc)
    cfg["destinations"][0]["ae_title"] = "NOT_ORTHANC"
    n.config_path.write_text(yaml.safe_dump({**yaml.safe_load(n.config_path.read_text()), **cfg}))
    n.start()
    assert n.storescu(study.files).returncode == 0
    rows = wait_for(lambda: [r for r in n.db("SELECT * FROM outbox") if r["state"] == "dead"] or None, 300,
                    "dead letters")
    assert rows[0]["attempts"] == 1 and "rejected permanently" in rows[0]["last_error"]
    assert "called AE title not recognised" in rows[0]["last_error"]


def test_kill_between_results_and_delivery_delivers_exactly_once(peers, study, tmp_path: Path) -> None:
    """Counted at a dcmtk storescp, which keeps every copy (Orthanc keeps one per UID and would
    hide a duplicate)."""
    _, make_node = peers
    receiver = StoreSCP(tmp_path / "scp").start()
    try:
        n = make_node({"destinations": [receiver.destination()], "export": FAST_RETRY},
                      env={"IODINE_NODE_FAULT_EXPORT_DELAY_S": "120"})
        n.start()
        assert n.storescu(study.files).returncode == 0
        wait_for(lambda: len(n.db("SELECT * FROM outbox WHERE state='pending'")) == 3, 300, "results in the outbox")
        n.kill9()
        assert receiver.received() == []
        n.env.pop("IODINE_NODE_FAULT_EXPORT_DELAY_S")
        n.start()
        wait_for(lambda: {r["state"] for r in n.db("SELECT state FROM outbox")} == {"delivered"}, 60, "delivery")
        delivered = {r["sop_instance_uid"] for r in n.db("SELECT sop_instance_uid FROM outbox")}
        counts = collections.Counter(receiver.received())
        assert set(counts) == delivered and len(delivered) == 3
        assert all(c == 1 for c in counts.values()), f"sent more than once: {counts}"
    finally:
        receiver.stop()


def test_stow_rs_to_orthanc_dicomweb_and_folder_routing(peers, study, tmp_path: Path) -> None:
    make_orthanc, make_node = peers
    orthanc = make_orthanc(plugins=[DICOMWEB_PLUGIN],
                           extra={"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    if not Path(DICOMWEB_PLUGIN).exists():
        from tests.conftest import IN_CI

        if IN_CI:
            pytest.fail(f"Orthanc DICOMweb plugin missing: {DICOMWEB_PLUGIN} (package orthanc-dicomweb)")
        pytest.skip("orthanc-dicomweb not installed")
    orthanc.start()
    folder = tmp_path / "research"
    n = make_node({"destinations": [
        {"name": "web", "kind": "stowrs", "url": f"{orthanc.url}/dicom-web"},
        {"name": "share", "kind": "folder", "path": str(folder), "send": ["sr"]},
    ], "export": FAST_RETRY})
    n.start()
    assert n.storescu(study.files).returncode == 0
    uid = study.truth["study_instance_uid"]
    wait_for(lambda: result_classes(orthanc, uid) == sorted([SEG, SR_3D, SC]), 300, "STOW-RS delivery")
    files = wait_for(lambda: list(folder.rglob("*.dcm")) or None, 30, "the folder copy")
    assert len(files) == 1 and files[0].parent.name == uid
    assert pydicom.dcmread(files[0]).SOPClassUID == SR_3D  # routing: only the SR goes to the share
    by_dest = {(r["destination"], r["kind"]) for r in n.db("SELECT * FROM outbox")}
    assert by_dest == {("web", "seg"), ("web", "sr"), ("web", "sc"), ("share", "sr")}


def test_demo_runs_to_completion(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "node", "demo", "--workdir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "metastasis" in out.stdout and "sr.dcm" in out.stdout and "job 1 done" in out.stdout
    assert json.loads(next((tmp_path / "demo").rglob("results.json")).read_text())["lesions"]


def test_demo_pair_shows_the_comparison(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "node", "demo", "--pair", "--workdir", str(tmp_path / "demo")],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "job 2 done" in out.stdout and "compared with the scan of" in out.stdout
    assert "lost (refractory candidate)" in out.stdout and "sc-2.dcm" in out.stdout
