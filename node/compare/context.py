"""TSH per study and how two scans relate (separate administrations vs one administration)."""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import AfterValidator
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

DEFAULT_TSH_TAG = "AdditionalPatientHistory"
DEFAULT_TSH_PATTERN = r"TSH\s*=\s*([0-9.]+)"
SAME_ADMINISTRATION_TOLERANCE_S = 3600.0  # one dose, however the time was typed
SAME_ACTIVITY_TOLERANCE = 0.01


def read_tsh(ds: Dataset, tag: str = DEFAULT_TSH_TAG, pattern: str = DEFAULT_TSH_PATTERN) -> float | None:
    """TSH (uIU/mL) from the configured attribute, or None ("unknown"): never guessed."""
    value = ds.get(tag)
    if value is None:
        return None
    match = re.search(pattern, str(value))
    if not match:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


@dataclass(frozen=True)
class Administration:
    when: datetime
    activity_bq: float


def same_administration(a: Administration, b: Administration) -> bool:
    """Two scans after one administration (dosimetry) rather than two administrations (the TSH
    comparison): the same start time (within an hour) and the same administered activity (1 %)."""
    return (abs((a.when - b.when).total_seconds()) <= SAME_ADMINISTRATION_TOLERANCE_S
            and abs(a.activity_bq - b.activity_bq) <= SAME_ACTIVITY_TOLERANCE * max(a.activity_bq, b.activity_bq))


ACCESSION_KEYS = ("accessionnumber", "accession_number", "accession")
TSH_KEYS = ("tsh", "tsh_uiu_per_ml", "tsh_miu_per_l")  # uIU/mL = mIU/L


def _norm(key: str) -> str:
    return key.strip().lower().replace(" ", "_")


def _pick(row: dict[str, object], names: tuple[str, ...]) -> object:
    for key, value in row.items():
        if _norm(str(key)) in names:
            return value
    return None


def read_tsh_sidecars(folder: Path) -> dict[str, tuple[float, str]]:
    """{AccessionNumber: (TSH, file name)} from every *.csv / *.json in `folder`, newer files winning.

    CSV: a header row with an accession column (AccessionNumber, accession_number or accession) and
    a TSH column (TSH, tsh_uiu_per_ml or tsh_miu_per_l). JSON: {"<accession>": <TSH>, ...} or a
    list of objects with those keys. A file that cannot be read is logged by name and skipped.
    """
    found: dict[str, tuple[float, str]] = {}
    if not folder.is_dir():
        return found
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".csv", ".json") and p.is_file()),
                   key=lambda p: (p.stat().st_mtime, p.name))
    for path in files:
        try:
            if path.suffix.lower() == ".csv":
                with open(path, newline="", encoding="utf-8-sig") as fh:
                    rows: list[dict[str, object]] = list(csv.DictReader(fh))
            else:
                data = json.loads(path.read_text(encoding="utf-8"))
                rows = ([{"accession": k, "tsh": v} for k, v in data.items()] if isinstance(data, dict)
                        else [r for r in data if isinstance(r, dict)])
        except (OSError, ValueError, csv.Error, AttributeError, TypeError) as exc:
            log.warning("TSH sidecar %s skipped: %s", path.name, exc)
            continue
        for n, row in enumerate(rows, start=1):
            accession, value = _pick(row, ACCESSION_KEYS), _pick(row, TSH_KEYS)
            if accession is None or value in (None, ""):
                continue
            try:
                found[str(accession).strip()] = (float(str(value).strip()), path.name)
            except ValueError:
                log.warning("TSH sidecar %s row %d: TSH %r is not a number", path.name, n, value)
    return found


def regex(value: str) -> str:
    """A valid regular expression, else ValueError naming the problem."""
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc})") from None
    return value


Regex = Annotated[str, AfterValidator(regex)]


@dataclass(frozen=True)
class TshSource:
    """Where TSH is read: a sidecar folder (by AccessionNumber) first, then the header attribute
    (`comparison.tsh` in the configuration)."""

    __pydantic_config__: ClassVar[dict[str, str]] = {"extra": "forbid"}  # a mistyped key fails (node.config)

    tag: str = DEFAULT_TSH_TAG
    pattern: Regex = DEFAULT_TSH_PATTERN
    sidecar_dir: Path | None = None  # CSV/JSON files keyed by AccessionNumber; read before the attribute

    def lookup(self, header: Dataset, accession: str | None = None) -> tuple[float | None, str]:
        """(TSH in uIU/mL or None, where it came from: the sidecar file, the attribute, or "unknown")."""
        accession = accession if accession is not None else str(header.get("AccessionNumber", "") or "")
        if self.sidecar_dir is not None and accession:
            hit = read_tsh_sidecars(self.sidecar_dir).get(accession.strip())
            if hit is not None:
                return hit[0], f"sidecar {hit[1]}"
        value = read_tsh(header, self.tag, self.pattern)
        return (value, f"attribute {self.tag}") if value is not None else (None, "unknown")
