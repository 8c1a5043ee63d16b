"""Folder destination: <path>/<StudyInstanceUID>/<SOPInstanceUID>.dcm, written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from node.export.base import DEAD, DELIVERED, RETRY, Outcome, Parcel, Report, no_report, register
from node.fsutil import copy_durable
from node.uids import is_valid_uid


@register("folder")
class FolderTarget:
    def __init__(self, destination: Any, node_config: Any) -> None:
        self.root = destination.path

    def send(self, parcels: Sequence[Parcel], report: Report = no_report) -> dict[int, Outcome]:
        out: dict[int, Outcome] = {}
        for p in parcels:
            if not (is_valid_uid(p.study_uid) and is_valid_uid(p.sop_instance_uid)):
                out[p.item_id] = Outcome(DEAD, f"invalid UID for a file name: {p.sop_instance_uid!r}")
                continue
            target = self.root / p.study_uid / f"{p.sop_instance_uid}.dcm"
            try:
                copy_durable(p.path, target)
            except OSError as exc:
                out[p.item_id] = Outcome(RETRY, f"cannot write {target}: {exc.strerror or exc}")
                continue
            out[p.item_id] = Outcome(DELIVERED)
            report(p.item_id, out[p.item_id])
        return out
