"""The pure parts of the listener's defences: UID syntax, streaming inflation with a cap, the
header scan of deflated files, the guard's command-set reader and its log throttle."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from bench import wire
from node.ingest.deflate import InflateError, inflated_size, is_deflated
from node.ingest.guard import Refusals, _command_field
from node.ingest.header import scan_values
from node.uids import is_valid_uid, uid_problem


@pytest.mark.parametrize("value", ["1.2.3\n", "1.2.3\n\n", "1.2.03", "1..2", ".1.2", "1.2.", "1.2 ", "", "1" * 65,
                                   "1.2.3\x00", "../1.2", "1.2/3"])
def test_invalid_uids(value: str) -> None:
    assert not is_valid_uid(value)
    assert uid_problem(value)


def test_valid_uids_and_reasons() -> None:
    for value in ("0", "1.2.840.10008.1.2.1", "2.25." + "1" * 59, "1.0.2"):
        assert is_valid_uid(value) and uid_problem(value) is None
    assert uid_problem("1" * 200) == "is 200 characters, over 64 (PS3.5 9.1)"
    assert "'1.2.3\\n'" in str(uid_problem("1.2.3\n"))


def _part10(path: Path, ts: str, dataset: bytes) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ts
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    path.write_bytes(out.getvalue() + dataset)
    return path


def _header_bytes() -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def _deflate(data: bytes, zeros_mb: int = 0) -> bytes:
    d = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [d.compress(data)]
    if zeros_mb:
        # a private OB element after the header attributes (PS3.5 7.8), tags in ascending order
        parts.append(d.compress(struct.pack("<HH2sHL", 0x0029, 0x1000, b"OB", 0, zeros_mb << 20)))
        parts += [d.compress(bytes(1 << 20)) for _ in range(zeros_mb)]
    return b"".join(parts) + d.flush()


def test_inflation_is_streamed_and_capped(tmp_path: Path) -> None:
    bomb = _part10(tmp_path / "bomb.dcm", DeflatedExplicitVRLittleEndian, _deflate(_header_bytes(), 64))
    assert is_deflated(bomb) and bomb.stat().st_size < 200_000
    with pytest.raises(InflateError) as caught:
        inflated_size(bomb, 10 << 20)
    assert caught.value.too_large and "inflates to more than 10 MB" in caught.value.reason
    assert inflated_size(bomb, 100 << 20) == len(_header_bytes()) + 12 + (64 << 20)
    corrupt = _part10(tmp_path / "corrupt.dcm", DeflatedExplicitVRLittleEndian, b"\xff" * 100)
    with pytest.raises(InflateError) as caught:
        inflated_size(corrupt, 10 << 20)
    assert not caught.value.too_large and "not a valid deflate stream" in caught.value.reason
    plain = _part10(tmp_path / "plain.dcm", ExplicitVRLittleEndian, _header_bytes())
    assert not is_deflated(plain)


def test_header_of_a_deflated_file_is_read_from_a_prefix(tmp_path: Path) -> None:
    path = _part10(tmp_path / "d.dcm", DeflatedExplicitVRLittleEndian, _deflate(_header_bytes(), 16))
    values = scan_values(path, ("SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID"))
    assert values is not None
    assert values["SOPInstanceUID"] == "1.2.3.4" and values["Modality"] == "CT"
    assert values["TransferSyntaxUID"] == DeflatedExplicitVRLittleEndian


def test_command_field_of_a_command_set() -> None:
    assert _command_field(wire.c_echo_rq()) == 0x0030
    assert _command_field(wire.c_store_rq(wire.CT_IMAGE_STORAGE, "1.2.3")) == 0x0001
    assert _command_field(b"\xde\xad\xbe\xef" * 7) is None
    assert _command_field(b"") is None


def test_refusals_are_counted_exactly_and_logged_throttled(caplog: pytest.LogCaptureFixture) -> None:
    refusals = Refusals()
    with caplog.at_level(logging.WARNING, logger="node.ingest.guard"):
        for _ in range(50):
            refusals.note("per-host-cap", ("10.0.0.9", 1234), "too many")
        refusals.note("artim-timeout", ("10.0.0.9", 1235), "slow")
    assert refusals.snapshot() == {"per-host-cap": 50, "artim-timeout": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused connection from 10.0.0.9:1234: per-host-cap: too many",
                     "refused connection from 10.0.0.9:1235: artim-timeout: slow"]
