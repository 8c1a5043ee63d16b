"""Database rows to the store's records, for every backend: a row is anything indexable by column
name (sqlite3.Row, psycopg's dict_row), so one converter serves SQLite and PostgreSQL alike."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from enum import StrEnum
from typing import Any, TypeVar

from node.completion import SeriesSnapshot, StudySnapshot
from node.store.records import DeliveryRow, Job, OutboxItem, StudyInfo
from node.store.states import DeliveryState, JobState, StudyState

Row = Mapping[str, Any]
S = TypeVar("S", bound=StrEnum)


def job(row: Row) -> Job:
    return Job(
        id=row["id"], kind=row["kind"], study_uid=row["study_uid"], state=JobState(row["state"]),
        attempts=row["attempts"], created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], error=row["error"], payload=json.loads(row["payload"] or "{}"),
        result=json.loads(row["result"]) if row["result"] else None,
        warnings=json.loads(row["warnings"] or "[]"), superseded_by=row["superseded_by"],
        lease_owner=row["lease_owner"], lease_expires_at=row["lease_expires_at"],
    )


def delivery(r: Row) -> DeliveryRow:
    return DeliveryRow(**{f.name: r[f.name] for f in fields(DeliveryRow)} | {"state": DeliveryState(r["state"])})


def claimed(rows: Iterable[Row]) -> dict[str, list[OutboxItem]]:
    """Claimed outbox rows (with their new lease) per destination, oldest first."""
    out: dict[str, list[OutboxItem]] = {}
    for r in sorted(rows, key=lambda r: r["id"]):
        out.setdefault(r["destination"], []).append(OutboxItem(**{f.name: r[f.name] for f in fields(OutboxItem)}))
    return out


def study_info(r: Row) -> StudyInfo:
    return StudyInfo(r["study_uid"], StudyState(r["state"]), r["patient_id"] or "", r["issuer_of_patient_id"] or "",
                     r["study_date"] or "", r["first_received"], r["last_received"], r["instance_count"], r["note"])


# The completion snapshot's per-series query, in SQL both backends run (placeholder `{p}`).
SNAPSHOT_SERIES_SQL = (
    "SELECT s.series_uid, s.modality, s.frame_of_reference_uid, s.instance_count, s.last_received,"
    " s.number_of_slices, s.series_description, COUNT(DISTINCT i.image_index) AS d,"
    " MIN(i.image_index) AS mn, MAX(i.image_index) AS mx"
    " FROM series s LEFT JOIN instances i ON i.series_uid = s.series_uid"
    " WHERE s.study_uid={p} GROUP BY s.series_uid ORDER BY s.series_uid")


def study_snapshot(study_uid: str, study: Row, series: Iterable[Row]) -> StudySnapshot:
    return StudySnapshot(
        study_uid, study["first_received"], study["last_received"],
        tuple(SeriesSnapshot(r["series_uid"], r["modality"] or "", r["frame_of_reference_uid"] or "",
                             r["instance_count"], r["last_received"], r["number_of_slices"], r["d"], r["mn"], r["mx"],
                             r["series_description"] or "") for r in series),
    )


def counts(states: type[S], rows: Iterable[Row]) -> dict[S, int]:
    """{state: n} from (state, n) rows, every state present (0 when none)."""
    out = dict.fromkeys(states, 0)
    for r in rows:
        out[states(r["state"])] = r["n"]
    return out
