"""Write one study's results into a folder: results.json, lesions.csv and the DICOM objects
(seg.dcm, sr.dcm, sc-N.dcm). File names come from the kind of object, never from DICOM values.

The service's job writes into a staging folder that node.results_store fsyncs and publishes;
`iodine-node process` writes beside the final folder and renames it into place (write_study_outputs).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from node.encode.objects import build_objects
from node.encode.sc import PriorView
from node.output.document import csv_rows
from node.quant.models import SeriesResult
from node.quant.study import QuantSettings


def write_results(out_dir: Path, document: dict[str, Any]) -> list[Path]:
    """results.json and lesions.csv of one results document."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(document, indent=1, ensure_ascii=False), encoding="utf-8")
    csv_path = out_dir / "lesions.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(csv_rows(document))
    return [json_path, csv_path]


def write_objects(out_dir: Path, objects: Sequence[tuple[str, Dataset]]) -> list[Path]:
    """seg.dcm, sr.dcm, sc-1.dcm, sc-2.dcm ... (names from the kind, never from DICOM values)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    pages = 0
    for kind, ds in objects:
        if kind == "sc":
            pages += 1
            name = f"sc-{pages}.dcm"
        else:
            name = f"{kind}.dcm"
        path = out_dir / name
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def write_outputs(target: Path, results: Sequence[tuple[SeriesResult, dict[str, Any]]],
                  settings: QuantSettings | None = None, prior: PriorView | None = None,
                  inputs_digest: str = "") -> list[Path]:
    """results.json + lesions.csv + the DICOM objects of the primary PET series in `target`, further
    series in target/<PET SeriesInstanceUID>/; returns the files written. `prior` adds the
    side-by-side page to the primary series' summary. The documents written carry each lesion's
    tracking UID, settled when the objects are built (the documents passed in are not changed)."""
    written: list[Path] = []
    for n, (result, doc) in enumerate(results):
        folder = target if n == 0 else target / result.pet_series_uid
        objects = build_objects(result, doc, settings or QuantSettings(), prior if n == 0 else None,
                                inputs_digest=inputs_digest)
        written += write_results(folder, objects.document)
        written += write_objects(folder, objects.datasets)
    return written


def write_study_outputs(out_dir: Path, results: Sequence[tuple[SeriesResult, dict[str, Any]]],
                        settings: QuantSettings | None = None, prior: PriorView | None = None) -> list[Path]:
    """write_outputs into a temporary folder beside out_dir, then moved in place (the offline
    `iodine-node process`; the service publishes through node.results_store instead)."""
    # Per process: another process may write the same study's (deterministic) results meanwhile.
    staging = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    written = [out_dir / p.relative_to(staging) for p in write_outputs(staging, results, settings, prior)]
    for attempt in range(3):  # another process may put the same (deterministic) results in place meanwhile
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(staging, out_dir)
            break
        except OSError:
            if attempt == 2:
                raise
    return written
