"""What the store hands out and takes in: frozen values, no database rows or connections.

Every `path` is relative to storage.root (the spool and results folders live under it), so the
index stays valid when the root is mounted elsewhere, e.g. on another node of a shared root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from node.store.states import DeliveryState, JobState, StudyState


class StudyBeingDeleted(Exception):
    """An instance of a study whose inputs retention is deleting right now: the sender retries later."""


class StoreUnavailable(Exception):
    """The index cannot be read or written right now (locked past the timeout, read-only, I/O error,
    server gone): the caller answers "retry later" (e.g. C-STORE 0xA700) instead of failing for good."""


class LeaseLost(Exception):
    """A node acted on a job or delivery whose lease another node has taken over (it expired)."""


@dataclass(frozen=True)
class InstanceRecord:
    """What the index keeps of one received instance (already validated). path: relative to storage.root."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    modality: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    specific_character_set: str = ""
    series_number: int | None = None
    series_description: str = ""
    frame_of_reference_uid: str = ""
    number_of_slices: int | None = None
    image_type: str = ""
    corrected_image: str = ""
    units: str = ""
    instance_number: int | None = None
    image_index: int | None = None


@dataclass(frozen=True)
class InstanceLocation:
    """Where an indexed instance lives: the duplicate check compares a re-sent instance with it."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    path: str


@dataclass(frozen=True)
class StudyInfo:
    """A study's identity and bookkeeping (no instance data)."""

    study_uid: str
    state: StudyState
    patient_id: str
    issuer_of_patient_id: str
    study_date: str
    first_received: float
    last_received: float
    instance_count: int
    note: str | None = None


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    study_uid: str
    state: JobState
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    warnings: list[str]
    superseded_by: int | None
    lease_owner: str | None = None  # node_id holding the job while it runs
    lease_expires_at: float | None = None  # epoch s; after it another node may claim the job


class Delivery(NamedTuple):
    """One outbox row to create when a job publishes: a result object for one destination.
    sha256: of the file as published (a torn or changed file is never sent)."""

    destination: str
    kind: str
    path: str
    sop_instance_uid: str
    sop_class_uid: str
    sha256: str | None = None


@dataclass(frozen=True)
class OutboxEntry:
    """What every outbox record names: the row, its job and study, and the object for one destination."""

    id: int
    job_id: int
    study_uid: str
    destination: str
    kind: str
    path: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class OutboxItem(OutboxEntry):
    """A claimed delivery, handed to the sender."""

    attempts: int
    created_at: float
    sha256: str | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None


@dataclass(frozen=True)
class DeliveryRow(OutboxEntry):
    """An outbox row as listed (`iodine-node jobs`, /jobs, tests)."""

    state: DeliveryState
    attempts: int
    next_attempt_at: float
    created_at: float
    delivered_at: float | None
    last_error: str | None
    warning: str | None
    sha256: str | None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
