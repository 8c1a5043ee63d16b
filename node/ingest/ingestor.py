"""Validate a received file, store it durably and index it: shared by the listener and the watch folder."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from node.index import Index, InstanceRecord
from node.ingest.sop_classes import ACCEPTED_SOP_CLASSES
from node.ingest.spool import Spool
from node.uids import is_valid_uid

log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C.4.2.1.4).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122


class IngestError(Exception):
    """An instance the node refuses, with the DIMSE status to answer and a reason naming the problem."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class IngestOutcome:
    record: InstanceRecord
    stored: bool  # False: a duplicate of an instance already stored


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def read_header(path: Path) -> pydicom.Dataset:
    """The dataset without pixel data, every element decoded; IngestError(0xC000) when it is not a
    DICOM Part 10 file or its elements do not decode (pydicom parses lazily, so force it here)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for _ in ds.iterall():
            pass
    except InvalidDicomError as exc:
        raise IngestError(CANNOT_UNDERSTAND, f"not a DICOM Part 10 file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means we cannot understand it
        raise IngestError(CANNOT_UNDERSTAND, f"cannot decode the dataset: {type(exc).__name__}: {exc}") from None
    if not any(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")):
        raise IngestError(CANNOT_UNDERSTAND, "no SOP, Study or Series UID: the payload is not a DICOM dataset")
    return ds


def check_pixel_data_complete(path: Path) -> None:
    """A file copied while still being written may parse but end early: compare the native pixel
    data length with Rows x Columns x Samples x Bits Allocated / 8 x Frames (PS3.5 8.1.1)."""
    try:
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
            return
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
        expected = expected * int(ds.BitsAllocated) // 8
        actual = len(ds.PixelData)
    except Exception as exc:  # noqa: BLE001 - a partial file fails in many ways
        raise IngestError(CANNOT_UNDERSTAND, f"cannot read the whole file: {type(exc).__name__}: {exc}") from None
    if actual < expected:
        raise IngestError(CANNOT_UNDERSTAND, f"pixel data truncated: {actual} of {expected} bytes")


def describe(ds: pydicom.Dataset, path: str, size: int) -> InstanceRecord:
    """Validate the identifying attributes and gather what later stages need."""
    sop_class = _text(ds, "SOPClassUID") or str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if not sop_class:
        raise IngestError(DATASET_MISMATCH, "SOPClassUID (0008,0016) is missing")
    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise IngestError(SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class} is not one this node stores")
    for keyword, tag in (("SOPInstanceUID", "(0008,0018)"), ("StudyInstanceUID", "(0020,000D)"),
                         ("SeriesInstanceUID", "(0020,000E)")):
        value = _text(ds, keyword)
        if not value:
            raise IngestError(DATASET_MISMATCH, f"{keyword} {tag} is missing")
        if not is_valid_uid(value):
            raise IngestError(DATASET_MISMATCH,
                              f"{keyword} {tag} is not a valid UID (digits and dots, <= 64 chars): {value[:70]!r}")
    return InstanceRecord(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=sop_class,
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
        path=path,
        size_bytes=size,
        modality=_text(ds, "Modality"),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        study_description=_text(ds, "StudyDescription"),
        specific_character_set=_text(ds, "SpecificCharacterSet"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        number_of_slices=_int(ds, "NumberOfSlices"),
        image_type=_text(ds, "ImageType"),
        corrected_image=_text(ds, "CorrectedImage"),
        units=_text(ds, "Units"),
        instance_number=_int(ds, "InstanceNumber"),
        image_index=_int(ds, "ImageIndex"),
    )


class Ingestor:
    def __init__(self, spool: Spool, index: Index, max_instance_bytes: int) -> None:
        self.spool = spool
        self.index = index
        self.max_instance_bytes = max_instance_bytes

    def ingest(self, temp: Path, *, source: str, calling_ae: str = "",
               context_sop_class: str | None = None, affected_sop_uid: str | None = None) -> IngestOutcome:
        """Store `temp` (a complete Part 10 file in the spool's file system) under its UIDs and index
        it. Raises IngestError for what the sender must be told; other exceptions mean 'not safe'."""
        size = temp.stat().st_size
        if size > self.max_instance_bytes:
            raise IngestError(OUT_OF_RESOURCES, f"instance of {size / 1e6:.1f} MB exceeds ingest.max_instance_mb "
                                                f"({self.max_instance_bytes / 1e6:.0f} MB)")
        ds = read_header(temp)
        probe = describe(ds, "", size)
        if source == "watch":
            check_pixel_data_complete(temp)
        if context_sop_class and probe.sop_class_uid != context_sop_class:
            raise IngestError(DATASET_MISMATCH, f"SOPClassUID {probe.sop_class_uid} differs from the presentation "
                                                f"context's {context_sop_class}")
        if affected_sop_uid and probe.sop_instance_uid != affected_sop_uid:
            raise IngestError(DATASET_MISMATCH, f"SOPInstanceUID {probe.sop_instance_uid} differs from the request's "
                                                f"Affected SOP Instance UID {affected_sop_uid}")
        final = self.spool.instance_path(probe.study_uid, probe.series_uid, probe.sop_instance_uid)
        record = describe(ds, str(final.relative_to(self.spool.root)), size)
        newly_written = self.spool.commit(temp, final)
        # Index even when the file was already there: a crash between the rename and the index
        # commit leaves an unindexed file that the sender's retry must complete.
        indexed = self.index.add_instance(record, source=source, calling_ae=calling_ae)
        return IngestOutcome(record, stored=newly_written or indexed)
