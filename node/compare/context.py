"""TSH per study and how two scans relate (separate administrations vs one administration)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

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
