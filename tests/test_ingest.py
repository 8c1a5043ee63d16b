"""Ingest over real DICOM associations: dcmtk as the scanner, Orthanc as a PACS, the node as a process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from tests.conftest import require_tool
from tests.peers import Orthanc, pid_children, run_dcmtk, wait_for

pytestmark = pytest.mark.peer  # every test runs a node process and dcmtk or Orthanc


@pytest.fixture(scope="module")
def study(phantom_factory):
    return phantom_factory(seed=11, noise=0.15)  # made once per session (tests/test_export.py's too)


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset after the Part 10 header (preamble, DICM, file meta group)."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    (group_length,) = struct.unpack("<I", raw[140:144])  # (0002,0000) UL value
    return raw[144 + group_length:]


def acknowledged(storescu_output: str) -> list[str]:
    """Files storescu saw acknowledged with Success, from its -v output."""
    done, current = [], None
    for line in storescu_output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("I: Received Store Response (Success)") and current:
            done.append(current)
            current = None
    return done


def test_echo_and_called_ae_check(node) -> None:
    n = node()
    assert n.echoscu().returncode == 0
    wrong = n.echoscu(called_ae="SOMEONE_ELSE")
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    assert n.echoscu().returncode == 0  # still serving


def test_push_study_stores_bytes_and_queues_one_job(node, study) -> None:
    n = node()
    result = n.storescu([study.out_dir / "PT", study.out_dir / "CT"])
    assert result.returncode == 0, result.stderr
    uid = study.truth["study_instance_uid"]
    assert n.instance_count(uid) == len(study.files)
    for original in study.files[::20]:
        sop = pydicom.dcmread(original, stop_before_pixels=True).SOPInstanceUID
        (row,) = n.db("SELECT path, source, calling_ae FROM instances WHERE sop_instance_uid=?", (sop,))
        stored = n.root / row["path"]
        assert stored.name == f"{sop}.dcm" and stored.parent.parent.name == uid
        assert dataset_bytes(stored) == dataset_bytes(original)  # byte for byte as sent
        assert (row["source"], row["calling_ae"]) == ("dicom", "STORESCU")
    jobs = wait_for(lambda: [j for j in n.jobs() if j["state"] == "done"], 300, "the quantify job to finish")
    assert len(n.jobs()) == 1
    payload = json.loads(jobs[0]["payload"])
    assert payload["pet_series"] == [study.truth["series"]["pet"]["series_instance_uid"]]
    assert payload["ct_series"] == {payload["pet_series"][0]: [study.truth["series"]["ct"]["series_instance_uid"]]}
    result_json = json.loads(jobs[0]["result"])
    (series,) = result_json["series"]
    assert series["pet_instances"] == study.truth["series"]["pet"]["instances"]
    assert series["ct_series_instance_uid"] == study.truth["series"]["ct"]["series_instance_uid"]
    results = json.loads((n.root / result_json["results_dir"] / "results.json").read_text())
    assert results["study_instance_uid"] == uid and results["schema"] == "iodine-node/results/v1"
    assert series["metastases"] >= 8 and series["lesions"] == len(results["lesions"])
    for name in ("seg.dcm", "sr.dcm", "sc-1.dcm"):
        assert f"{result_json['results_dir']}/{name}" in result_json["files"]
        assert pydicom.dcmread(n.root / result_json["results_dir"] / name).StudyInstanceUID == uid
    wait_for(lambda: "foci (" in n.log() and f"study {uid}" in n.log(), 10, "the job's log line")
    # Sending the same study again stores nothing twice and queues nothing new.
    again = n.storescu([study.out_dir / "PT"])
    assert again.returncode == 0
    time.sleep(2.5)
    assert n.instance_count(uid) == len(study.files) and len(n.jobs()) == 1
    assert "PHANTOM" not in n.full_log()  # no patient names in logs


def test_late_instance_reopens_study_and_supersedes(node, study, tmp_path: Path) -> None:
    n = node()
    first = [f for f in study.files if f.name != "CT_0001.dcm"]
    assert n.storescu(first).returncode == 0
    wait_for(lambda: [j for j in n.jobs() if j["state"] == "done"], 300, "first job")
    assert n.storescu([study.out_dir / "CT" / "CT_0001.dcm"]).returncode == 0
    wait_for(lambda: len([j for j in n.jobs() if j["state"] == "done"]) == 2, 300, "second job")
    jobs = n.jobs()
    assert len(jobs) == 2 and jobs[0]["superseded_by"] == jobs[1]["id"] and jobs[1]["superseded_by"] is None


def test_jpeg_ls_compressed_series(node, study, tmp_path: Path) -> None:
    compressed = tmp_path / "jls"
    compressed.mkdir()
    originals = study.pet_files[:12]
    for f in originals:
        run_dcmtk("dcmcjpls", [str(f), str(compressed / f.name)], check=True)
    n = node()
    result = n.storescu(sorted(compressed.iterdir()), "-xt")  # propose JPEG-LS lossless
    assert result.returncode == 0, result.stdout + result.stderr
    for f in originals:
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        (row,) = n.db("SELECT path, transfer_syntax_uid FROM instances WHERE sop_instance_uid=?", (sop,))
        assert row["transfer_syntax_uid"] == JPEGLSLossless
        stored = pydicom.dcmread(n.root / row["path"])
        assert np.array_equal(stored.pixel_array, pydicom.dcmread(f).pixel_array)  # decodable, lossless


def test_four_concurrent_associations(node, study) -> None:
    n = node()
    files = study.files
    groups = [files[i::4] for i in range(4)]
    results: list[subprocess.CompletedProcess] = []
    threads = [threading.Thread(target=lambda g=g: results.append(n.storescu(g, calling_ae="SCANNER"))) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0, 0, 0]
    assert n.instance_count(study.truth["study_instance_uid"]) == len(files)
    wait_for(lambda: [j for j in n.jobs() if j["state"] == "done"], 300, "the job")
    assert len(n.jobs()) == 1


def test_orthanc_pushes_a_study(node, study, tmp_path: Path) -> None:
    n = node()
    orthanc = Orthanc(tmp_path / "orthanc", modalities={"node": [n.ae_title, "127.0.0.1", n.port]}).start()
    try:
        for f in study.pet_files[:30] + study.ct_files[:10]:
            orthanc.post("/instances", f.read_bytes(), "application/dicom")
        (orthanc_study,) = orthanc.get("/studies")
        job = orthanc.post("/modalities/node/store", {"Resources": [orthanc_study], "Synchronous": True})
        assert job is not None
        assert n.instance_count(study.truth["study_instance_uid"]) == 40
        assert "association accepted from ORTHANC" in n.log()
    finally:
        orthanc.stop()


def test_whitelist_rejects_unknown_callers(node) -> None:
    n = node({"ingest": {"allowed_callers": [{"ae_title": "SCANNER1", "host": "127.0.0.1"},
                                             {"ae_title": "SCANNER2", "host": "10.1.2.3"}]}})
    assert n.echoscu(calling_ae="SCANNER1").returncode == 0
    stranger = n.echoscu(calling_ae="INTRUDER")
    assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    wrong_host = n.echoscu(calling_ae="SCANNER2")  # listed, but only from 10.1.2.3
    assert wrong_host.returncode != 0 and "Calling AE Title Not Recognized" in wrong_host.stdout + wrong_host.stderr
    for who in ("INTRUDER", "SCANNER2"):  # the node logs just after the peer has its answer
        wait_for(lambda who=who: f"association rejected: calling AE '{who}' at 127.0.0.1" in n.log(), 10,
                 f"the rejection of {who} in the log")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def test_tls_association(node, study, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=pki)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.crt", cwd=pki)
    n = node({"node": {"tls": {"cert": str(pki / "server.crt"), "key": str(pki / "server.key"),
                               "ca": str(pki / "ca.crt"), "require_client_cert": True}}})
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    echo = n.echoscu(*tls)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    stored = run_dcmtk("storescu", ["-aec", n.ae_title, *tls, "127.0.0.1", str(n.port), str(study.pet_files[0])])
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert n.instance_count() == 1
    assert n.echoscu().returncode != 0  # plain TCP is not accepted on a TLS port
    anonymous = n.echoscu("+tla", "+cf", str(pki / "ca.crt"))  # TLS without a client certificate
    assert anonymous.returncode != 0
    assert n.echoscu(*tls).returncode == 0


def test_kill_during_push_loses_nothing_acknowledged(node, study, tmp_path: Path) -> None:
    n = node()
    files = [str(f) for f in study.files]
    exe = require_tool("storescu")
    proc = subprocess.Popen([exe, "-v", "-aec", n.ae_title, "127.0.0.1", str(n.port), *files],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: len(acknowledged("".join(lines))) >= 60, 60, "60 acknowledged instances")
    n.kill9()
    proc.wait(timeout=60)
    reader.join(timeout=10)
    acked = acknowledged("".join(lines))
    assert 60 <= len(acked) < len(files), "the kill must land in the middle of the push"
    n.start()  # restart on the same storage root
    by_sop = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in acked}
    rows = n.db(f"SELECT sop_instance_uid, path FROM instances WHERE sop_instance_uid IN "
                f"({','.join('?' * len(by_sop))})", tuple(by_sop))
    assert len(rows) == len(by_sop)
    for row in rows:
        assert dataset_bytes(n.root / row["path"]) == dataset_bytes(Path(by_sop[row["sop_instance_uid"]]))
    assert list((n.root / "spool" / "tmp").iterdir()) == []  # partial files cleared on restart
    # The sender's retry completes the study; exactly one job runs.
    assert n.storescu(files).returncode == 0
    assert n.instance_count(study.truth["study_instance_uid"]) == len(files)
    wait_for(lambda: [j for j in n.jobs() if j["state"] == "done"], 300, "the job")


def test_job_interrupted_by_kill_runs_again_after_restart(node, study, tmp_path: Path) -> None:
    n = node(env={"IODINE_NODE_FAULT_JOB_SLEEP_S": "60"})
    assert n.storescu(study.files).returncode == 0
    wait_for(lambda: [j for j in n.jobs() if j["state"] == "running"], 120, "the job to run")
    n.kill9()
    n.env.pop("IODINE_NODE_FAULT_JOB_SLEEP_S")
    n.start()
    (job,) = wait_for(lambda: [j for j in n.jobs() if j["state"] == "done"], 300, "the job to run again")
    assert job["attempts"] == 2 and len(n.jobs()) == 1
    assert "1 interrupted job(s) queued again" in n.log()


def test_worker_crash_fails_job_then_retry(node, study) -> None:
    n = node(env={"IODINE_NODE_FAULT_JOB_SLEEP_S": "3"})
    assert n.storescu(study.pet_files + study.ct_files).returncode == 0
    wait_for(lambda: [j for j in n.jobs() if j["state"] == "running"], 120, "the job to run")
    assert n.proc is not None
    workers = wait_for(lambda: [p for p in pid_children(n.proc.pid)
                                if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()], 10, "a worker process")
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    (job,) = wait_for(lambda: [j for j in n.jobs() if j["state"] == "failed"], 120, "the job to fail")
    assert "worker process died" in job["error"]
    listing = n.cli("jobs")
    assert "failed" in listing.stdout and "worker process died" in listing.stdout
    assert n.echoscu().returncode == 0  # the listener survived
    retry = n.cli("jobs", "retry", str(job["id"]))
    assert retry.returncode == 0 and f"job {job['id']} queued again" in retry.stdout
    wait_for(lambda: [j for j in n.jobs() if j["state"] == "done"], 300, "the retried job")
    bad = n.cli("jobs", "retry", "999")
    assert bad.returncode == 1 and "no job with id 999" in bad.stderr


def test_watch_folder(node, study, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    n = node({"ingest": {"watch_dir": str(inbox), "watch_settle_s": 1.5}})
    inbox.mkdir(exist_ok=True)
    # A file written slowly, in pieces with pauses shorter than the settle time.
    data = study.pet_files[5].read_bytes()
    target = inbox / "slow.dcm"
    with open(target, "wb") as fh:
        for i in range(0, len(data), len(data) // 6 + 1):
            fh.write(data[i:i + len(data) // 6 + 1])
            fh.flush()
            time.sleep(0.4)
    (inbox / "notes.txt").write_text("this is not DICOM\n")
    sub = inbox / "usb" / "DICOM"
    sub.mkdir(parents=True)
    for f in study.ct_files[:3]:
        shutil.copy(f, sub / f.name)
    wait_for(lambda: n.instance_count() == 4, 30, "watch-folder instances")
    wait_for(lambda: not target.exists() and not (inbox / "notes.txt").exists(), 30, "the inbox to empty")
    sop = pydicom.dcmread(study.pet_files[5], stop_before_pixels=True).SOPInstanceUID
    (row,) = n.db("SELECT path, source FROM instances WHERE sop_instance_uid=?", (sop,))
    assert row["source"] == "watch" and (n.root / row["path"]).read_bytes() == data
    reasons = list((n.root / "quarantine").glob("*.reason"))
    assert len(reasons) == 1 and "notes.txt: not a DICOM Part 10 file" in reasons[0].read_text()
    assert reasons[0].with_suffix("").exists() or Path(str(reasons[0])[:-7]).exists()


def _send_raw(port: int, ae_title: str, datasets: list[Dataset | Path], sop_class: str = CTImageStorage) -> list[int]:
    """Send datasets (or Part 10 files sent as raw bytes) on ONE association; returns the statuses."""
    from pynetdicom import _config

    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    statuses = []
    try:
        for item in datasets:
            _config.STORE_SEND_CHUNKED_DATASET = isinstance(item, Path)
            status = assoc.send_c_store(item)
            statuses.append(int(status.Status) if status else -1)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    return statuses


_PIXEL_MODULE = ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                 "SamplesPerPixel", "PhotometricInterpretation")


def _ct_dataset(study, **changes: object) -> Dataset:
    """A CT header from the phantom without pixel data (so it stays under a small size limit)."""
    ds = pydicom.dcmread(study.ct_files[0])
    for key in _PIXEL_MODULE:
        delattr(ds, key)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def test_bad_input_gets_failure_status_and_association_goes_on(node, study, tmp_path: Path) -> None:
    n = node({"ingest": {"max_instance_mb": 0.1}})
    garbage = tmp_path / "garbage.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = DicomBytesIO()
    header.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(header, meta)
    garbage.write_bytes(header.getvalue() + b"%PDF-1.4 this is a report, not a DICOM dataset\n" * 20)
    good = pydicom.dcmread(study.ct_files[1])
    mr = _ct_dataset(study, SOPClassUID=MRImageStorage, SOPInstanceUID="1.2.3.99")
    mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    small_good = _ct_dataset(study, SOPInstanceUID="1.2.3.100")
    statuses = _send_raw(n.port, n.ae_title, [
        garbage,                                                             # not a dataset
        _ct_dataset(study, SOPInstanceUID="../../etc/passwd"),               # malicious UID
        _ct_dataset(study, StudyInstanceUID=None, SOPInstanceUID="1.2.3.7"),  # no Study UID
        good,                                                                # 0.13 MB > 0.1 MB limit
        mr,                                                                  # SOP class not stored
        small_good,                                                          # still accepted afterwards
    ])
    assert statuses[0] == 0xC000
    assert statuses[1] == 0xA900
    assert statuses[2] == 0xA900
    assert statuses[3] == 0xA700
    assert statuses[4] == 0x0122
    assert statuses[5] == 0x0000
    assert n.instance_count() == 1
    log = n.log()
    assert "not a dataset" not in log or "cannot decode" in log
    assert "SOPInstanceUID (0008,0018) is not a valid UID" in log and "'../../etc/passwd'" in log
    assert "StudyInstanceUID (0020,000D) is missing" in log
    assert "exceeds ingest.max_instance_mb" in log
    assert "SOP Class 1.2.840.10008.5.1.4.1.1.4 not stored by this node" in log
    assert "from BADSCU" in log
    assert not any(p.name == "passwd" for p in n.root.rglob("*"))
    assert n.echoscu().returncode == 0
