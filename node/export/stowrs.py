"""DICOMweb STOW-RS destination (PS3.18 10.5) through dicomweb-client, one session per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from node.export.base import DEAD, DELIVERED, RETRY, Outcome, Parcel, Report, no_report, register

# HTTP answers that a retry cannot change (the request or the object is wrong, or we are not allowed).
_PERMANENT = {400, 401, 403, 404, 405, 406, 409, 413, 415, 422}


@register("stowrs")
class StowTarget:
    def __init__(self, destination: Any, node_config: Any) -> None:
        self.d = destination

    def send(self, parcels: Sequence[Parcel], report: Report = no_report) -> dict[int, Outcome]:
        session = requests.Session()
        session.verify = self.d.verify_tls
        if self.d.username is not None:
            session.auth = (self.d.username, self.d.password or "")
        client = DICOMwebClient(self.d.url, session=session, headers=dict(self.d.headers) or None, timeout=60)
        out: dict[int, Outcome] = {}
        by_study: dict[str, list[Parcel]] = {}
        for p in parcels:
            by_study.setdefault(p.study_uid, []).append(p)
        for study_uid, group in by_study.items():
            datasets = []
            for p in group:
                try:
                    datasets.append(pydicom.dcmread(p.path))
                except Exception as exc:  # noqa: BLE001 - an unreadable result file cannot be sent
                    out[p.item_id] = Outcome(RETRY, f"result file missing or unreadable: {exc}")
            sendable = [p for p in group if p.item_id not in out]
            if not sendable:
                continue
            try:
                response = client.store_instances(datasets, study_instance_uid=study_uid)
            except requests.HTTPError as exc:
                code = exc.response.status_code if exc.response is not None else 0
                state = DEAD if code in _PERMANENT else RETRY
                for p in sendable:
                    out[p.item_id] = Outcome(state, f"STOW-RS to {self.d.url} answered HTTP {code}")
                continue
            except (requests.RequestException, OSError) as exc:
                for p in sendable:
                    out[p.item_id] = Outcome(RETRY, f"STOW-RS to {self.d.url} failed: {exc}")
                continue
            failed = {str(item.ReferencedSOPInstanceUID): item for item in response.get("FailedSOPSequence", [])}
            for p in sendable:
                item = failed.get(p.sop_instance_uid)
                if item is None:
                    out[p.item_id] = Outcome(DELIVERED)
                else:
                    reason = int(item.get("FailureReason", 0))
                    state = RETRY if 0xA700 <= reason <= 0xA7FF else DEAD
                    out[p.item_id] = Outcome(state, f"STOW-RS failure reason 0x{reason:04X}")
            for p in sendable:  # one response per request (per study): recorded before the next request
                report(p.item_id, out[p.item_id])
        return out
