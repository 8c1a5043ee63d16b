"""Two listeners in one process keep to themselves: constructing or starting one changes no
process-wide state (tempfile's directory, pynetdicom's _config) and each receives into its own spool."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pydicom
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from node.config import parse_config
from node.ingest.ingestor import Ingestor
from node.ingest.listener import Listener
from node.ingest.spool import Spool
from node.store import Store, open_store
from tests.peers import free_port


def _ct(sop_uid: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7433.99.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7433.99.1.1"
    ds.Modality = "CT"
    ds.PatientID = "STATE"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\0" * 8
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.set_original_encoding(False, True)
    return ds


def _listener(root: Path) -> tuple[Listener, Store]:
    config = parse_config({"node": {"bind": "127.0.0.1", "port": free_port()}, "storage": {"root": str(root),
                                                                                           "min_free_gb": 0.0}})
    spool, index = Spool(root), open_store(root)
    return Listener(config, Ingestor(spool, index, 10**9), spool.tmp), index


def _send(port: int, ds: pydicom.Dataset) -> int:
    ae = AE(ae_title="STATETEST")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="IODINE_NODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_a_second_listener_does_not_alter_the_first(tmp_path: Path) -> None:
    tempdir, chunked = tempfile.tempdir, _config.STORE_RECV_CHUNKED_DATASET
    first, index_a = _listener(tmp_path / "a")
    first.start()
    second, index_b = _listener(tmp_path / "b")
    second.start()
    try:
        assert (tempfile.tempdir, _config.STORE_RECV_CHUNKED_DATASET) == (tempdir, chunked)
        assert _send(first.port, _ct("1.2.826.0.1.3680043.9.7433.99.1.1.1")) == 0
        assert _send(second.port, _ct("1.2.826.0.1.3680043.9.7433.99.1.1.2")) == 0
        a = [p.name for p in (tmp_path / "a" / "studies").rglob("*.dcm")]
        b = [p.name for p in (tmp_path / "b" / "studies").rglob("*.dcm")]
        assert a == ["1.2.826.0.1.3680043.9.7433.99.1.1.1.dcm"] and b == ["1.2.826.0.1.3680043.9.7433.99.1.1.2.dcm"]
        assert pydicom.dcmread(tmp_path / "a" / "studies" / _ct("x").StudyInstanceUID / _ct("x").SeriesInstanceUID
                               / a[0]).PatientID == "STATE"
        assert not list((tmp_path / "a" / "spool" / "tmp").iterdir())
        assert not list((tmp_path / "b" / "spool" / "tmp").iterdir())
        assert (tempfile.tempdir, _config.STORE_RECV_CHUNKED_DATASET) == (tempdir, chunked)
    finally:
        first.stop()
        second.stop()
        index_a.close()
        index_b.close()
