"""The assemble stage: DICOM files -> studies and series -> datasets handed to the pure core.

Reads headers (never pixels) to group files into studies and series and to choose the PET series
and their CT; the pixels are read later, one file at a time, while node.quant fills its volumes
(`file_pixels`), so a whole-body CT never sits in memory twice. Everything after reading is
node.quant (pure) and node.output (documents and files).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from node.output.document import results_document
from node.quant.models import SeriesResult
from node.quant.study import QuantSettings, StudyError, pet_rejection, quantify_series, suv_volume
from node.quant.suv import SuvSettings
from node.quant.volume import Volume, assemble


@dataclass
class SeriesFiles:
    """The files of one series as found on disk, with the header of one of them."""

    series_uid: str
    header: Dataset
    paths: list[Path] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", ""))

    @property
    def description(self) -> str:
        return str(self.header.get("SeriesDescription", ""))


def read_header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def file_pixels(ds: Dataset) -> np.ndarray:
    """A dataset's pixels; read from its file when it was read without them (node.quant.volume.assemble)."""
    if "PixelData" not in ds and getattr(ds, "filename", None):
        ds = pydicom.dcmread(ds.filename)
    return ds.pixel_array


def read_volume(paths: Sequence[Path], label: str, dtype: type = np.float32) -> tuple[Volume, list[int]]:
    """The volume of one series' files (headers first, pixels one file at a time)."""
    return assemble([read_header(p) for p in paths], label, dtype=dtype, pixels=file_pixels)


def group_by_study(paths: Iterable[Path]) -> tuple[dict[str, dict[str, SeriesFiles]], list[str]]:
    """{study: {series: files}}, and the files that are not DICOM (named, not fatal)."""
    studies: dict[str, dict[str, SeriesFiles]] = {}
    skipped: list[str] = []
    for path in paths:
        try:
            ds = read_header(path)
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported and skipped
            skipped.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        entry = studies.setdefault(study, {}).setdefault(series, SeriesFiles(series, ds))
        entry.paths.append(Path(path))
    return studies, skipped


def select_series(series: dict[str, SeriesFiles], settings: QuantSettings
                  ) -> tuple[list[tuple[SeriesFiles, SeriesFiles | None]], list[str]]:
    """(PET, CT-or-None) pairs to quantify, and notes on the series passed over."""
    notes, pairs = [], []
    cts = [s for s in series.values() if s.modality == "CT"]
    for s in series.values():
        if s.modality != "PT":
            continue
        why = pet_rejection(s.header, settings)
        if why:
            notes.append(f"PET series {s.series_uid} ({s.description!r}) not quantified: {why}")
            continue
        for_uid = str(s.header.get("FrameOfReferenceUID", ""))
        same_for = [c for c in cts if for_uid and str(c.header.get("FrameOfReferenceUID", "")) == for_uid]
        ct = max(same_for, key=lambda c: len(c.paths)) if same_for else None
        if ct is None:
            notes.append(f"PET series {s.series_uid}: no CT with its Frame of Reference; CT-based features absent")
        pairs.append((s, ct))
    return pairs, notes


def suv_volume_of(pet_paths: Sequence[Path], settings: SuvSettings | None = None) -> Volume:
    """The SUVbw volume of one PET series' files."""
    return suv_volume([read_header(p) for p in pet_paths], settings or SuvSettings(), file_pixels)[0]


def quantify_files(pet_paths: Sequence[Path], ct_paths: Sequence[Path] | None, settings: QuantSettings) -> SeriesResult:
    """Headers are read first; pixel data slice by slice while the volumes are filled."""
    pet = [read_header(p) for p in pet_paths]
    ct = [read_header(p) for p in ct_paths] if ct_paths else None
    return quantify_series(pet, ct, settings, file_pixels)


def process_study(series: dict[str, SeriesFiles], settings: QuantSettings) -> list[tuple[SeriesResult,
                                                                                       dict[str, Any]]]:
    """Quantify every selected PET series of one study, each with its results document (the primary
    series, most slices, first); StudyError when none can be."""
    pairs, notes = select_series(series, settings)
    if not pairs:
        raise StudyError("no quantifiable PET series: " + ("; ".join(notes) or "the study holds no PET series"))
    pairs.sort(key=lambda p: -len(p[0].paths))  # the primary series (most slices) first
    out = []
    for pet, ct in pairs:
        result = quantify_files(pet.paths, ct.paths if ct else None, settings)
        out.append((result, results_document(result, settings, notes)))
    return out
