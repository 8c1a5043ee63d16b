"""`iodine-node demo` ends in one line, not a traceback: its push retries a busy node, then says why it gave up."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from node.demo import FAULT_BUSY_ENV, PushError, push_files
from tests.peers import free_port


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six tiny CT instances of one series: enough to abort a transfer in the middle."""
    out = tmp_path_factory.mktemp("ct")
    study, series = generate_uid(), generate_uid()
    files = []
    for i in range(6):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = study, series, "CT", i + 1
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = bytes(32)
        path = out / f"ct{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


class Scp:
    """A real pynetdicom storage SCP on a loopback port that misbehaves as a busy node would."""

    def __init__(self, abort_on: set[tuple[int, int]] = frozenset(), allowed_calling: list[str] | None = None,
                 refuse_on: set[int] = frozenset()):
        self.abort_on = abort_on  # (association number, C-STORE number within it), both from 1
        self.refuse_on = refuse_on  # C-STORE numbers over all associations answered "out of resources"
        self.received: list[str] = []
        self.associations = 0
        self._lock = threading.Lock()
        self.ae = AE(ae_title="BUSY_NODE")
        self.ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        if allowed_calling is not None:
            self.ae.require_calling_aet = allowed_calling
        self.port = free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_ACCEPTED, self._accepted), (evt.EVT_C_STORE, self._store)])

    def _accepted(self, event: evt.Event) -> None:
        with self._lock:
            self.associations += 1
            event.assoc.number = self.associations
            event.assoc.stores = 0

    def _store(self, event: evt.Event) -> int:
        event.assoc.stores += 1
        if (event.assoc.number, event.assoc.stores) in self.abort_on:
            event.assoc.abort()  # A-ABORT before answering: the requestor's C-STORE gets no response
            return 0xA700
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0xA700 if len(self.received) in self.refuse_on else 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def test_push_resumes_on_a_new_association_after_an_abort(ct_files: list[Path]) -> None:
    scp = Scp(abort_on={(1, 3)})
    try:
        stored = push_files(ct_files, "127.0.0.1", scp.port, "BUSY_NODE", first_backoff_s=0.05)
    finally:
        scp.stop()
    assert stored == len(ct_files) and scp.associations == 2
    # every instance exactly once: the aborted one was sent again, none was lost or doubled
    assert sorted(scp.received) == sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in ct_files)


def test_push_gives_up_after_attempts_in_a_row_without_progress(ct_files: list[Path]) -> None:
    scp = Scp(abort_on={(n, 1) for n in range(1, 10)})
    try:
        with pytest.raises(PushError) as info:
            push_files(ct_files, "127.0.0.1", scp.port, "BUSY_NODE", attempts=3, first_backoff_s=0.05)
    finally:
        scp.stop()
    message = str(info.value)
    assert "\n" not in message and scp.associations == 3
    assert f"the association with BUSY_NODE@127.0.0.1:{scp.port} ended after 0 of 6 instances (aborted" in message
    assert "gave up after 3 attempts, 0 of 6 instances sent" in message


def test_push_stops_at_once_on_a_permanent_rejection(ct_files: list[Path]) -> None:
    scp = Scp(allowed_calling=["SOMEONE_ELSE"])
    try:
        with pytest.raises(PushError, match=r"rejected the association \(permanent: calling AE title not recognised\)"):
            push_files(ct_files, "127.0.0.1", scp.port, "BUSY_NODE", first_backoff_s=0.05)
    finally:
        scp.stop()
    assert scp.received == []


def test_push_to_a_closed_port_says_so() -> None:
    port = free_port()  # nobody listens there
    with pytest.raises(PushError, match=rf"no association with X@127.0.0.1:{port} \(connection refused or "
                                        r"unreachable\); gave up after 2 attempts, 0 of 1 instances sent"):
        push_files([Path("/never-read")], "127.0.0.1", port, "X", attempts=2, first_backoff_s=0.05)


def test_push_reports_instances_the_node_refused(ct_files: list[Path]) -> None:
    scp = Scp(refuse_on={2, 5})
    try:
        with pytest.raises(PushError, match=rf"BUSY_NODE@127.0.0.1:{scp.port} refused 2 of 6 instances "
                                            r"\(first: status 0xA700\)$"):
            push_files(ct_files, "127.0.0.1", scp.port, "BUSY_NODE", first_backoff_s=0.05)
    finally:
        scp.stop()
    assert len(scp.received) == 6 and scp.associations == 1  # all sent once: a refusal is not retried


@pytest.mark.peer
def test_demo_against_a_saturated_node_ends_in_one_line(tmp_path: Path) -> None:
    """The demo's own node accepts one association and another scanner holds it (real A-ASSOCIATE-RJ,
    local limit exceeded): the demo retries with backoff, then says so in one line and exits 1."""
    script = Path(sys.executable).parent / "iodine-node"
    assert script.is_file(), f"{script} is missing: make venv installs the console script"
    env = {**os.environ, FAULT_BUSY_ENV: "1"}
    out = subprocess.run([str(script), "demo", "--workdir", str(tmp_path / "demo")], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("iodine-node demo: could not send the study: IODINE_DEMO@127.0.0.1:")
    assert "rejected the association (transient: local limit exceeded" in last
    assert "gave up after 4 attempts, 0 of " in last
    assert out.stderr.count("trying again in") == 3  # backoff between the 4 attempts
