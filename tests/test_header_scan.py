"""The fast header scanner agrees with pydicom, and the spool/index reconcile after a lost commit."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pydicom
import pytest
from pydicom.filewriter import dcmwrite
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from node.ingest.header import scan_values
from node.ingest.ingestor import HEADER_KEYWORDS, IngestError, Ingestor, _from_dataset, describe, read_header
from node.ingest.spool import Spool
from node.store import open_store
from tests.conftest import data_file

# Two real Siemens PET slices kept in the repo (origin, licence: tests/data/SOURCE.md).
REAL_SLICES = ("1.dcm", "2.dcm")


def via_pydicom(path: Path) -> dict:
    return _from_dataset(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS)))


@pytest.fixture(scope="module")
def pet_file(phantom_factory) -> Path:
    return phantom_factory(seed=2, patient_name="王^小明", charset="GB18030", noise=0.0).pet_files[3]


def test_agrees_with_pydicom_on_phantom_and_real_scans(pet_file: Path, phantom_factory) -> None:
    files = [pet_file, *phantom_factory(seed=1, vendor="ge", noise=0.15).files[::40]]
    files += [data_file("real-pet-slices", name) for name in REAL_SLICES]
    for f in files:
        fast = scan_values(f, HEADER_KEYWORDS)
        assert fast is not None, f
        assert describe(fast, "x", 1) == describe(via_pydicom(f), "x", 1), f
    assert describe(scan_values(pet_file, HEADER_KEYWORDS), "x", 1).patient_name == "王^小明"


def test_implicit_vr_and_undefined_length_sequences(pet_file: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(pet_file)
    seq = ds.RadiopharmaceuticalInformationSequence
    seq.is_undefined_length = True
    for item in seq:
        item.is_undefined_length_sequence_item = True
        item.RadionuclideCodeSequence.is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = tmp_path / "implicit.dcm"
    ds.save_as(out, implicit_vr=True, little_endian=True)
    fast = scan_values(out, HEADER_KEYWORDS)
    assert fast is not None and fast["ImageIndex"] == ds.ImageIndex and fast["NumberOfSlices"] == ds.NumberOfSlices
    assert describe(fast, "x", 1) == describe(via_pydicom(out), "x", 1)


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_syntaxes_fall_back_to_pydicom(pet_file: Path, tmp_path: Path, syntax: str) -> None:
    ds = pydicom.dcmread(pet_file)
    ds.file_meta.TransferSyntaxUID = syntax
    out = tmp_path / "other.dcm"
    if syntax == ExplicitVRBigEndian:
        del ds.PixelData  # only the header matters here
        dcmwrite(out, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    else:
        ds.save_as(out)
    fast = scan_values(out, HEADER_KEYWORDS)
    if syntax == ExplicitVRBigEndian:
        assert fast is None
    else:  # deflated: scanned in a bounded inflated prefix, never inflated whole
        assert fast is not None and describe(fast, "x", 1) == describe(via_pydicom(out), "x", 1)
    assert describe(read_header(out), "x", 1) == describe(via_pydicom(out), "x", 1)


def test_truncated_and_foreign_files(pet_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(pet_file.read_bytes()[:700])
    assert scan_values(cut, HEADER_KEYWORDS) is None  # falls back; pydicom then decides
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(IngestError) as info:
        read_header(text)
    assert info.value.status == 0xC000 and "not a DICOM Part 10 file" in info.value.reason


def test_reconcile_indexes_files_the_index_lost(pet_file: Path, tmp_path: Path) -> None:
    spool, index = Spool(tmp_path), open_store(tmp_path)
    ingestor = Ingestor(spool, index, 10**9)
    record = describe(read_header(pet_file), "", 0)
    final = spool.instance_path(record.study_uid, record.series_uid, record.sop_instance_uid)
    final.parent.mkdir(parents=True)
    shutil.copyfile(pet_file, final)  # on disk, as after a power loss rolled back the index commit
    assert not index.studies.has_instance(record.sop_instance_uid)
    assert ingestor.reconcile() == 1
    assert index.studies.has_instance(record.sop_instance_uid)
    assert ingestor.reconcile() == 0
    row = index.studies.instance_location(record.sop_instance_uid)
    assert row is not None and (tmp_path / row.path) == final
    with closing(sqlite3.connect(tmp_path / "index.sqlite3")) as c:  # how it came: the index file itself
        assert c.execute("SELECT source FROM instances").fetchall() == [("reconciled",)]
