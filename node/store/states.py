"""The states of studies, jobs and outbox deliveries, defined once for the whole node.

StrEnum members compare equal to their strings ("done" == JobState.DONE), are stored as those
strings by every backend and serialise to JSON as them, so logs, `iodine-node jobs`, /jobs and the
database read the same words.
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    """receiving -> queued (a job was queued) | no-pet; new instances re-open a study (receiving).
    deleting/deleted: retention is removing / has removed its inputs (node.retention)."""

    RECEIVING = "receiving"
    QUEUED = "queued"
    NO_PET = "no-pet"
    DELETING = "deleting"
    DELETED = "deleted"


class JobState(StrEnum):
    """pending -> running (claimed under a lease) -> done | failed. A pending job whose study received
    more data before it ran, or a running one a newer job replaced, ends superseded."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class DeliveryState(StrEnum):
    """One outbox row (result object x destination): pending (waiting, or claimed under a lease while
    it is being sent) -> delivered | dead (a dead letter, re-sent by `iodine-node jobs retry`);
    superseded: newer results of the study replaced it before it was delivered."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    SUPERSEDED = "superseded"
