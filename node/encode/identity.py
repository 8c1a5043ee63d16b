"""Deterministic identity of result objects.

Series and SOP Instance UIDs derive from the source series, the algorithm version, the settings
and a digest of the inputs: every SOP Instance UID that went into the job, every earlier scan
(prior) whose results were used (with a digest of those results) and, from the service's jobs,
the findings themselves (node.pipeline). Reprocessing the same input with
the same settings and the same priors yields the same UIDs (a PACS that already holds them keeps
one copy); whenever the content can change (a late instance, a newly found or re-quantified prior,
another setting, another version) the UIDs change too, so a PACS that keeps the first copy of a
UID (Orthanc's default) can never show stale content under a current UID (docs/export.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any

import node
from node.uids import derive_uid

MANUFACTURER = "iodine-node"
MODEL = "iodine-node"
DEVICE_SERIAL = "iodine-node"
SERIES_NUMBERS = {"seg": 9001, "sr": 9002, "sc": 9003}
SERIES_DESCRIPTIONS = {"seg": "iodine-node lesion SEG", "sr": "iodine-node lesion measurements (TID 1500)",
                       "sc": "iodine-node summary (MIP and lesion table)"}


def settings_digest(settings: Any) -> str:
    data = asdict(settings) if is_dataclass(settings) else settings
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def inputs_digest(sop_instance_uids: Iterable[str], priors: Iterable[tuple[str, bytes]] = ()) -> str:
    """Digest of the input instances (order-free) and of the priors used: (StudyInstanceUID, the
    bytes of that study's results.json as read)."""
    h = hashlib.sha256()
    for uid in sorted(set(sop_instance_uids)):
        h.update(uid.encode() + b"\0")
    h.update(b"\1")
    for study_uid, document in sorted(priors):
        h.update(study_uid.encode() + b"\0" + hashlib.sha256(document).digest())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class ResultIdentity:
    pet_series_uid: str
    ct_series_uid: str | None
    digest: str  # of the settings
    inputs: str = ""  # inputs_digest(...)

    def series_uid(self, kind: str) -> str:
        return derive_uid("result-series", kind, self.pet_series_uid, self.ct_series_uid, node.__version__,
                          self.digest, self.inputs)

    def instance_uid(self, kind: str, number: int = 1) -> str:
        return derive_uid("result-instance", kind, number, self.pet_series_uid, self.ct_series_uid,
                          node.__version__, self.digest, self.inputs)

    def tracking_uid(self, lesion_id: int) -> str:
        return derive_uid("tracking", self.pet_series_uid, lesion_id, node.__version__, self.digest, self.inputs)
