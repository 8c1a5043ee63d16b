"""Validate a received file, store it durably and index it: shared by the listener and the watch folder."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import pydicom
import pydicom.filereader
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from node.crashpoints import crash_point
from node.fsutil import fsync_dir, fsync_file
from node.ingest.deflate import InflateError, inflated_size, is_deflated
from node.ingest.header import HeaderValue, pixel_data_shortfall, scan_instance, scan_values
from node.ingest.sop_classes import ACCEPTED_SOP_CLASSES
from node.ingest.spool import ReceiveFile, Spool, is_disk_error
from node.metrics import Metrics
from node.store import InstanceRecord, Store, StoreUnavailable, StudyBeingDeleted, StudyState
from node.uids import uid_problem

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


_INT_KEYWORDS = {"SeriesNumber", "InstanceNumber", "NumberOfSlices", "ImageIndex"}

# Only these attributes are decoded at ingest (the rest stays as received, parsed later).
HEADER_KEYWORDS = (
    "SpecificCharacterSet", "ImageType", "SOPClassUID", "SOPInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "Modality", "StudyDescription", "SeriesDescription", "PatientName", "PatientID",
    "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "SeriesInstanceUID",
    "SeriesNumber", "InstanceNumber", "FrameOfReferenceUID", "CorrectedImage", "Units", "NumberOfSlices",
    "ImageIndex",
)
Header = Mapping[str, HeaderValue]


def _from_dataset(ds: pydicom.Dataset) -> dict[str, HeaderValue]:
    out: dict[str, HeaderValue] = {}
    for keyword in HEADER_KEYWORDS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if keyword in _INT_KEYWORDS:
            out[keyword] = int(value)
        elif isinstance(value, pydicom.multival.MultiValue):
            out[keyword] = "\\".join(str(v) for v in value)
        else:
            out[keyword] = str(value)
    for keyword in ("MediaStorageSOPClassUID", "TransferSyntaxUID"):
        if keyword in ds.file_meta:
            out[keyword] = str(ds.file_meta[keyword].value)
    return out


def read_header(path: Path) -> Header:
    """The attributes ingest needs, decoded; IngestError(0xC000) when the file is not DICOM Part 10
    or those attributes do not decode."""
    try:
        values = scan_values(path, HEADER_KEYWORDS)
        if values is None:  # big endian, deflated, or not a plain stream: let pydicom read it
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
            values = _from_dataset(ds)
    except InvalidDicomError as exc:
        raise IngestError(CANNOT_UNDERSTAND, f"not a DICOM Part 10 file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means we cannot understand it
        raise IngestError(CANNOT_UNDERSTAND, f"cannot decode the dataset: {type(exc).__name__}: {exc}") from None
    return checked_header(values)


def checked_header(values: Header) -> Header:
    """`values` if it names any SOP, Study or Series UID; else IngestError(0xC000)."""
    if not any(k in values for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")):
        raise IngestError(CANNOT_UNDERSTAND, "no SOP, Study or Series UID: the payload is not a DICOM dataset")
    return values


def _incomplete(actual: int, expected: int) -> str:
    return (f"pixel data incomplete: {actual} of {expected} bytes "
            "(Rows x Columns x SamplesPerPixel x BitsAllocated x frames)")


def check_pixel_data_complete(path: Path) -> None:
    """An instance whose native pixel data is shorter than Rows x Columns x Samples x Bits Allocated
    / 8 x Frames (PS3.5 8.1.1, PS3.3 C.7.6.3): a file copied while still being written, or a data
    set a sender cut short. The pixel data is not read, only its length and the bytes present."""
    fast = pixel_data_shortfall(path)
    if fast is not None:
        if fast[0] < fast[1]:
            raise IngestError(CANNOT_UNDERSTAND, _incomplete(*fast))
        return
    try:  # big endian, deflated, or a stream the scanner does not follow: pydicom decides
        ds = pydicom.dcmread(path, defer_size=1024)
        if "PixelData" not in ds or ds.file_meta.TransferSyntaxUID.is_compressed:
            return
        raw = ds.get_item("PixelData", keep_deferred=True)
        length = getattr(raw, "length", None)
        if length is None or length == 0xFFFFFFFF:  # already decoded, or encapsulated
            return
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * int(ds.BitsAllocated)
        expected = (bits + 7) // 8
        actual = min(length, path.stat().st_size - raw.value_tell) if raw.value_tell is not None else length
    except Exception as exc:  # noqa: BLE001 - a partial file fails in many ways
        raise IngestError(CANNOT_UNDERSTAND, f"cannot read the whole file: {type(exc).__name__}: {exc}") from None
    if actual < expected:
        raise IngestError(CANNOT_UNDERSTAND, _incomplete(actual, expected))


def _dataset_offset(fh: BinaryIO) -> int:
    """Where the data set starts in a Part 10 file: after preamble, DICM and the (0002) group."""
    fh.seek(0)
    head = fh.read(144)
    if len(head) == 144 and head[128:132] == b"DICM" and head[132:140] == b"\x02\x00\x00\x00UL\x04\x00":
        return 144 + int.from_bytes(head[140:144], "little")
    fh.seek(128 + 4 if head[128:132] == b"DICM" else 0)
    pydicom.filereader._read_file_meta_info(fh)  # noqa: SLF001 - no group length: walk the group
    return fh.tell()


def same_dataset(a: Path, b: Path) -> bool:
    """True when two Part 10 files hold the same data set bytes (their file meta may differ)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        oa, ob = _dataset_offset(fa), _dataset_offset(fb)
        if a.stat().st_size - oa != b.stat().st_size - ob:
            return False
        fa.seek(oa)
        fb.seek(ob)
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def describe(h: Header, path: str, size: int) -> InstanceRecord:
    """Validate the identifying attributes and gather what later stages need."""

    def text(keyword: str) -> str:
        value = h.get(keyword)
        return "" if value is None else str(value)

    def integer(keyword: str) -> int | None:
        value = h.get(keyword)
        return value if isinstance(value, int) else None

    sop_class = text("SOPClassUID") or text("MediaStorageSOPClassUID")
    if not sop_class:
        raise IngestError(DATASET_MISMATCH, "SOPClassUID (0008,0016) is missing")
    if sop_class not in ACCEPTED_SOP_CLASSES:
        raise IngestError(SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class} is not one this node stores")
    for keyword, tag in (("SOPInstanceUID", "(0008,0018)"), ("StudyInstanceUID", "(0020,000D)"),
                         ("SeriesInstanceUID", "(0020,000E)")):
        value = text(keyword)
        if not value:
            raise IngestError(DATASET_MISMATCH, f"{keyword} {tag} is missing")
        problem = uid_problem(value)
        if problem:
            raise IngestError(DATASET_MISMATCH, f"{keyword} {tag} {problem}")
    return InstanceRecord(
        sop_instance_uid=text("SOPInstanceUID"),
        sop_class_uid=sop_class,
        series_uid=text("SeriesInstanceUID"),
        study_uid=text("StudyInstanceUID"),
        transfer_syntax_uid=text("TransferSyntaxUID"),
        path=path,
        size_bytes=size,
        modality=text("Modality"),
        patient_id=text("PatientID"),
        issuer_of_patient_id=text("IssuerOfPatientID"),
        patient_name=text("PatientName"),
        patient_birth_date=text("PatientBirthDate"),
        patient_sex=text("PatientSex"),
        accession_number=text("AccessionNumber"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        study_description=text("StudyDescription"),
        specific_character_set=text("SpecificCharacterSet"),
        series_number=integer("SeriesNumber"),
        series_description=text("SeriesDescription"),
        frame_of_reference_uid=text("FrameOfReferenceUID"),
        number_of_slices=integer("NumberOfSlices"),
        image_type=text("ImageType"),
        corrected_image=text("CorrectedImage"),
        units=text("Units"),
        instance_number=integer("InstanceNumber"),
        image_index=integer("ImageIndex"),
    )


class Ingestor:
    def __init__(self, spool: Spool, store: Store, max_instance_bytes: int, min_free_gb: float = 0.0,
                 metrics: Metrics | None = None) -> None:
        self.spool = spool
        self.store = store
        self.max_instance_bytes = max_instance_bytes
        self.min_free_gb = min_free_gb
        self.metrics = metrics
        # fsync releases the GIL: flushing the file while the header is parsed halves the latency.
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")

    def reconcile(self) -> int:
        """Index instance files that are on disk but not in the index (after a power loss rolled
        back the last index commits, or a crash between link and commit); returns how many."""
        known = self.store.studies.instance_paths()
        # Files of a study retention is deleting are never indexed again (node.retention).
        deleting = set(self.store.studies.studies_in_state(StudyState.DELETING))
        added = 0
        for path in sorted(self.spool.studies.glob("*/*/*.dcm")):
            rel = str(path.relative_to(self.spool.root))
            if rel in known or path.parent.parent.name in deleting:
                continue
            try:
                record = describe(read_header(path), rel, path.stat().st_size)
            except IngestError as exc:
                log.error("reconcile: %s cannot be indexed: %s", rel, exc.reason)
                continue
            if self.store.studies.add_instance(record, source="reconciled", calling_ae=""):
                added += 1
        return added

    def ingest(self, temp: Path, *, source: str, calling_ae: str = "",
               context_sop_class: str | None = None, affected_sop_uid: str | None = None) -> IngestOutcome:
        """Store `temp` (a complete Part 10 file in the spool's file system) under its UIDs and index
        it. Raises IngestError for what the sender must be told; other exceptions mean 'not safe'.
        A full disk or an I/O error is 0xA700 (retry later), with the partial file removed."""
        error = ReceiveFile.error_of(temp)
        if error is not None:
            temp.unlink(missing_ok=True)
            raise IngestError(OUT_OF_RESOURCES, f"cannot store the data set: {error.strerror or error} "
                                                f"(errno {error.errno}); retry later")
        try:
            return self._ingest(temp, source, calling_ae, context_sop_class, affected_sop_uid)
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            temp.unlink(missing_ok=True)
            raise IngestError(OUT_OF_RESOURCES, f"storage error: {exc.strerror or exc} (errno {exc.errno}); "
                                                "retry later") from None
        except StoreUnavailable as exc:
            raise IngestError(OUT_OF_RESOURCES, f"index error: {exc}; retry later") from None

    def _ingest(self, temp: Path, source: str, calling_ae: str, context_sop_class: str | None,
                affected_sop_uid: str | None) -> IngestOutcome:
        size = temp.stat().st_size
        free_gb = shutil.disk_usage(self.spool.root).free / 1e9
        if free_gb < self.min_free_gb:
            raise IngestError(OUT_OF_RESOURCES, f"disk space {free_gb:.1f} GB is below storage.min_free_gb "
                                                f"({self.min_free_gb:g} GB): refusing new data")
        if size > self.max_instance_bytes:
            raise IngestError(OUT_OF_RESOURCES, f"instance of {size / 1e6:.1f} MB exceeds ingest.max_instance_mb "
                                                f"({self.max_instance_bytes / 1e6:.0f} MB)")
        synced = self._io.submit(fsync_file, temp)
        try:
            scan = scan_instance(temp, HEADER_KEYWORDS)  # one pass: header values and pixel data length
            syntax = scan.values.get("TransferSyntaxUID") if scan is not None else None
            if syntax == DeflatedExplicitVRLittleEndian or (scan is None and is_deflated(temp)):
                # A deflate bomb must not be inflated whole (node/ingest/deflate.py); the scan
                # above inflated a bounded prefix only.
                try:
                    inflated_size(temp, self.max_instance_bytes)
                except InflateError as exc:
                    raise IngestError(OUT_OF_RESOURCES if exc.too_large else CANNOT_UNDERSTAND,
                                      f"{exc.reason} (ingest.max_instance_mb)" if exc.too_large else exc.reason
                                      ) from None
            header = read_header(temp) if scan is None else checked_header(scan.values)
            probe = describe(header, "", size)
            pixel_bytes = scan.pixel_bytes if scan is not None else None
            if pixel_bytes is None:
                check_pixel_data_complete(temp)
            elif pixel_bytes[0] < pixel_bytes[1]:
                raise IngestError(CANNOT_UNDERSTAND, _incomplete(*pixel_bytes))
        finally:
            synced.result()
        if context_sop_class and probe.sop_class_uid != context_sop_class:
            raise IngestError(DATASET_MISMATCH, f"SOPClassUID {probe.sop_class_uid} differs from the presentation "
                                                f"context's {context_sop_class}")
        if affected_sop_uid and probe.sop_instance_uid != affected_sop_uid:
            raise IngestError(DATASET_MISMATCH, f"SOPInstanceUID {probe.sop_instance_uid} differs from the request's "
                                                f"Affected SOP Instance UID {affected_sop_uid}")
        final = self.spool.instance_path(probe.study_uid, probe.series_uid, probe.sop_instance_uid)
        record = replace(probe, path=str(final.relative_to(self.spool.root)))
        state = self.store.studies.study_state(record.study_uid)
        if state == StudyState.DELETING:
            raise IngestError(OUT_OF_RESOURCES, f"study {record.study_uid} is being deleted by retention; retry later")
        duplicate = self._duplicate(temp, record)
        if duplicate is not None:
            return duplicate
        newly_written = self.spool.commit(temp, final, synced=True)
        if not newly_written and not same_dataset(final, temp):
            # A file no index row describes yet (a crash between link and commit): start-up reconciliation
            # indexes it; this different copy under the same UID is refused.
            raise IngestError(CANNOT_UNDERSTAND, f"SOP Instance UID {record.sop_instance_uid} is already stored "
                                                 "with different content; send corrected data under new UIDs")
        crash_point("ingest-linked")
        # Index even when the file was already there: a crash between the link and the index
        # commit leaves an unindexed file that the sender's retry (or start-up reconciliation) completes.
        new_study = state is None  # for the log line only: a race may say it twice
        try:
            indexed = self.store.studies.add_instance(record, source=source, calling_ae=calling_ae)
        except BaseException as exc:
            if newly_written:  # never leave a file the index does not describe
                self._unlink(final)
            if isinstance(exc, StudyBeingDeleted):
                raise IngestError(OUT_OF_RESOURCES, f"study {record.study_uid} is being deleted by retention; "
                                                    "retry later") from None
            raise
        if not indexed and newly_written:
            # The same UID was indexed meanwhile under another path (another study or series).
            self._unlink(final)
            duplicate = self._duplicate(temp, record)
            if duplicate is not None:
                return duplicate
        if new_study and indexed:
            log.info("study %s arriving from %s (%s)", record.study_uid, calling_ae or source, record.modality)
        if self.metrics is not None and (newly_written or indexed):
            self.metrics.inc("iodine_instances_received_total")
            self.metrics.inc("iodine_bytes_received_total", size)
        crash_point("ingest-indexed")  # durable and indexed, not yet acknowledged
        return IngestOutcome(record, stored=newly_written or indexed)

    def _unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def _duplicate(self, temp: Path, record: InstanceRecord) -> IngestOutcome | None:
        """An instance whose SOP Instance UID is indexed already: the same data set again is a
        success that stores nothing; under another study or series, or with other content, it is
        refused (a UID names one data set, PS3.3 C.12.1.1.1; corrections need new UIDs). None:
        not indexed yet (or its file is missing, so this copy may take its place)."""
        row = self.store.studies.instance_location(record.sop_instance_uid)
        if row is None:
            return None
        if (row.study_uid, row.series_uid) != (record.study_uid, record.series_uid):
            raise IngestError(DATASET_MISMATCH, f"SOP Instance UID {record.sop_instance_uid} is already stored in "
                                                f"study {row.study_uid} series {row.series_uid}; refused under "
                                                f"study {record.study_uid} series {record.series_uid}")
        stored = self.spool.root / row.path
        if not stored.is_file():
            return None
        if not same_dataset(stored, temp):
            raise IngestError(CANNOT_UNDERSTAND, f"SOP Instance UID {record.sop_instance_uid} is already stored "
                                                 "with different content; send corrected data under new UIDs")
        return IngestOutcome(replace(record, path=row.path), stored=False)
