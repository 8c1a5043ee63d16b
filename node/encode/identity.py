"""Deterministic identity of result objects.

Series and SOP Instance UIDs derive from the source series, the algorithm version and the
settings: reprocessing the same input with the same settings yields the same UIDs, so a PACS
replaces rather than piles up; any change of input or setting gives new ones.
"""

from __future__ import annotations

import hashlib
import json
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


@dataclass(frozen=True)
class ResultIdentity:
    pet_series_uid: str
    ct_series_uid: str | None
    digest: str

    def series_uid(self, kind: str) -> str:
        return derive_uid("result-series", kind, self.pet_series_uid, self.ct_series_uid, node.__version__,
                          self.digest)

    def instance_uid(self, kind: str, number: int = 1) -> str:
        return derive_uid("result-instance", kind, number, self.pet_series_uid, self.ct_series_uid,
                          node.__version__, self.digest)

    def tracking_uid(self, lesion_id: int) -> str:
        return derive_uid("tracking", self.pet_series_uid, lesion_id, node.__version__, self.digest)
