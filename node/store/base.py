"""The persistence interface: the one seam between the node and its index database.

Three small stores by concern, reached through one `Store`:
- `store.studies`: studies, series, instances (what was received, where its file is, study states);
- `store.jobs`: the job queue (quantify jobs, one effective job per study version);
- `store.outbox`: deliveries of result objects to destinations.
Every SQL statement lives in an implementation of this interface: node.store.sql, written once
over a dialect, with the backends node.store.sqlite (one node) and node.store.postgres (several
nodes, issue 18). Nothing else opens a connection or sees a transaction: a change that
must be atomic is ONE method here (e.g. `jobs.publish_results` checks supersession, runs the
caller's publish step and commits the outbox rows in one transaction).

Rules every implementation keeps:
- Each method is one transaction: it commits before it returns, or changes nothing and raises.
  A commit survives a process crash (kill -9). Methods marked *durable* commit so that the change
  also survives a power loss before they return (files are deleted next).
- Leases. A job or delivery is claimed by a node (`node_id`) for `lease_s` seconds
  (lease_owner, lease_expires_at). The owner renews it (heartbeat) while it works and ends it with
  the outcome. Once a lease has expired, another node may claim the job or delivery (its owner
  died); the old owner's later outcome is then refused (`LeaseLost` or False, per method).
  A restarted node releases its own leases (`jobs.recover_after_restart`, `outbox.release_leases`);
  the embedded SQLite index serves one node, so there every lease counts as this node's.
- Exactly one effective job per study version: `jobs.queue` creates a job only if the study is
  still as the completion monitor assessed it (expect_last_received) and marks every other job of
  the study superseded_by it (pending ones end superseded at once); a new instance of a study
  supersedes its pending job (`studies.add_instance`); a job that was superseded while it ran
  never publishes (`jobs.publish_results` returns False).
- A database that cannot be reached or written right now raises StoreUnavailable (the caller
  answers "retry later"); the implementation's own exceptions never leak out.
- Paths (instances, outbox) are relative to storage.root.
- Times are epoch seconds (time.time()); `now` parameters exist for tests and default to it.
- States are node.store.states (StudyState, JobState, DeliveryState): never bare strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from node.completion import StudySnapshot
from node.store.records import (
    Delivery,
    DeliveryRow,
    InstanceLocation,
    InstanceRecord,
    Job,
    OutboxItem,
    StudyInfo,
)
from node.store.states import DeliveryState, JobState, StudyState

# Default lease of a claimed job or delivery (s). The owner renews it every LEASE_S / 3 at most;
# a node that stopped renewing is presumed dead after it and its work is taken over.
LEASE_S = 60.0

# What a job's publish step returns: the final result document and its deliveries.
PublishStep = Callable[[], tuple[dict[str, Any], Sequence[Delivery]]]


@runtime_checkable
class StudyStore(Protocol):
    """Studies, series and instances: what the node received and where each file is."""

    def add_instance(self, rec: InstanceRecord, source: str, calling_ae: str, now: float | None = None) -> bool:
        """Index a stored instance (its study and series created on first sight); False if its SOP
        Instance UID is indexed already (idempotent, counted once). New data re-opens a study that was
        queued or processed (state receiving) and supersedes its pending job in the same transaction.
        Raises StudyBeingDeleted while retention deletes the study's inputs (checked in the same
        transaction as retention's claim, so one of the two always sees the other)."""
        ...

    def has_instance(self, sop_instance_uid: str) -> bool: ...

    def instance_location(self, sop_instance_uid: str) -> InstanceLocation | None:
        """Where an indexed instance is (study, series, path); None if not indexed."""
        ...

    def instance_paths(self) -> set[str]:
        """Every indexed instance path (start-up reconciliation looks for files not among them)."""
        ...

    def study_instance_paths(self, study_uid: str) -> list[str]:
        """The instance paths of one study."""
        ...

    def series_paths(self, series_uid: str) -> list[str]:
        """The instance paths of one series, ordered by ImageIndex, InstanceNumber, path."""
        ...

    def study_series(self, study_uid: str) -> list[str]:
        """The Series Instance UIDs of a study."""
        ...

    def has_study(self, study_uid: str) -> bool: ...

    def study_state(self, study_uid: str) -> StudyState | None: ...

    def study_info(self, study_uid: str) -> StudyInfo | None: ...

    def studies_in_state(self, state: StudyState) -> list[str]:
        """Study UIDs in a state (oldest first)."""
        ...

    def studies_received_before(self, cutoff: float) -> list[str]:
        """Study UIDs whose last instance arrived before `cutoff` and whose inputs are not deleted."""
        ...

    def studies_of_patient(self, patient_id: str, issuer_of_patient_id: str, exclude_study_uid: str) -> list[str]:
        """Other studies of a patient (same PatientID and IssuerOfPatientID, '' for none)."""
        ...

    def study_snapshot(self, study_uid: str) -> StudySnapshot | None:
        """What the completion rules assess: per series the count, NumberOfSlices and the distinct
        ImageIndex values received (read in one consistent snapshot)."""
        ...

    def set_study_state(self, study_uid: str, state: StudyState, note: str | None,
                        expect_last_received: float | None = None) -> bool:
        """Set the state; with expect_last_received only if nothing arrived since (False otherwise)."""
        ...

    def is_busy(self, study_uid: str) -> bool:
        """A pending or running job, or a pending delivery: retention keeps everything of the study."""
        ...

    def claim_for_deletion(self, study_uid: str, cutoff: float, note: str) -> list[str] | None:
        """Retention step 1 (durable): if the study's last instance is still before `cutoff`, it is not
        deleted and not busy, mark it deleting (from then on add_instance raises StudyBeingDeleted)
        and return its instance paths; None otherwise."""
        ...

    def drop_study_inputs(self, study_uid: str, note: str) -> None:
        """Retention step 3 (durable): delete the study's instance and series rows; study deleted."""
        ...

    def delete_results_if_idle(self, study_uid: str, delete: Callable[[], None]) -> bool:
        """Run `delete` (removes the study's result files) inside a transaction that holds off every
        publication of the study's results, unless the study is busy (then False, nothing run)."""
        ...


@runtime_checkable
class JobStore(Protocol):
    """The job queue. Claims are leases (see the module docstring)."""

    def queue(self, kind: str, study_uid: str, payload: dict[str, Any], warnings: Sequence[str],
              expect_last_received: float) -> int | None:
        """Queue a job for a study still receiving and unchanged since it was assessed (last_received
        equal); in the same transaction mark the study queued and every other not-yet-superseded job
        of the study (pending, running, done, failed) superseded_by the new one; pending ones end
        superseded. None (nothing changed) when the study changed or is not receiving. When the
        completion monitor runs on several nodes at once, exactly one of them gets the id."""
        ...

    def claim(self, node_id: str, lease_s: float = LEASE_S, now: float | None = None) -> Job | None:
        """Take the oldest claimable job: pending, or running under a lease that expired and is held
        by another node (its owner died). It becomes running, owned by node_id until now + lease_s,
        attempts + 1. Concurrent claimers never get the same job. None if there is none."""
        ...

    def renew(self, job_id: int, node_id: str, lease_s: float = LEASE_S, now: float | None = None) -> bool:
        """Heartbeat: extend node_id's lease on a running job. False if the lease is no longer its own
        (taken over after expiry, or the job ended): the caller stops treating the job as its own."""
        ...

    def release(self, job_id: int, node_id: str) -> bool:
        """Give a running job back to the queue (pending, lease cleared) without an outcome, e.g. at
        shutdown; False if node_id does not hold it."""
        ...

    def publish_results(self, job_id: int, publish: PublishStep, node_id: str | None = None,
                        on_committed: Callable[[], None] | None = None) -> bool:
        """Finish a job successfully, in ONE transaction that holds off the job's study (no other
        publication, no retention of its results meanwhile):
        1. a job superseded while it ran (superseded_by set or state superseded) ends superseded and
           False is returned, `publish` never runs;
        2. with node_id: the lease must still be node_id's, else LeaseLost (another node took over);
        3. `publish()` puts the durable result files in place and returns (result, deliveries);
        4. the job is done with `result`; the study's undelivered (pending, dead) outbox rows of
           earlier results are superseded; one pending row per delivery is inserted (a row for the
           same destination and SOP Instance UID is reset to pending with the new path and digest,
           unless it was delivered already).
        `on_committed` runs after the commit while this process still holds the store (a test hook:
        nothing else of this process has seen the rows yet). True when published."""
        ...

    def fail(self, job_id: int, error: str, node_id: str | None = None) -> bool:
        """The job failed with `error` (a reason a person can act on); lease cleared. A job superseded
        meanwhile ends superseded instead. With node_id, False if the lease is not node_id's any
        more (another node runs it now: its outcome counts, not this one)."""
        ...

    def retry(self, job_id: int) -> Job:
        """Put a failed or done job back in the queue (pending). KeyError: no such job; ValueError
        (with the reason): it is pending or running, or superseded (retry the newer one)."""
        ...

    def recover_after_restart(self, node_id: str) -> int:
        """At start-up: node_id's running jobs (in SQLite: every running job) go back to pending, or end
        superseded when a newer job replaced them meanwhile; returns how many were queued again."""
        ...

    def get(self, job_id: int) -> Job | None: ...

    def recent(self, limit: int = 100) -> list[Job]:
        """The newest jobs first."""
        ...

    def counts(self) -> dict[JobState, int]:
        """Jobs per state (every state present, 0 when none)."""
        ...


@runtime_checkable
class OutboxStore(Protocol):
    """Deliveries of result objects, one row per (destination, SOP Instance UID). Claims are leases."""

    def claim(self, node_id: str, limit: int, lease_s: float = LEASE_S,
              now: float | None = None) -> dict[str, list[OutboxItem]]:
        """Take up to `limit` pending rows whose next attempt is due (next_attempt_at <= now) and that no
        node holds under a live lease; lease them to node_id until now + lease_s. Per destination,
        oldest first. Concurrent claimers never get the same row."""
        ...

    def renew(self, item_ids: Sequence[int], node_id: str, lease_s: float = LEASE_S,
              now: float | None = None) -> int:
        """Heartbeat for a long batch: extend node_id's leases on these rows; returns how many it holds."""
        ...

    def record_outcome(self, item_id: int, state: DeliveryState, error: str | None = None,
                       warning: str | None = None, next_attempt_at: float | None = None,
                       node_id: str | None = None) -> None:
        """Record one send's outcome at once (a crash later never re-sends a confirmed object): state,
        attempts + 1, the error/warning, the next attempt time (pending), the delivery time
        (delivered); the lease ends. A row superseded meanwhile stays superseded unless it was in fact
        delivered. With node_id, an outcome other than delivered is ignored when another node holds
        the row now (a delivered outcome is always recorded: the object is at the destination)."""
        ...

    def release_leases(self, node_id: str) -> int:
        """At start-up: end node_id's leases (in SQLite: every lease); returns how many."""
        ...

    def rows(self, job_id: int | None = None) -> list[DeliveryRow]:
        """Every row (of one job), oldest first."""
        ...

    def resend_dead(self, job_id: int) -> int:
        """A job's dead letters back to pending, due now, attempts 0 (after the cause was fixed); how many."""
        ...

    def needed_paths(self, study_uid: str) -> list[str]:
        """Paths of the study's undelivered (pending, dead) rows: the result versions to keep."""
        ...

    def counts(self) -> dict[DeliveryState, int]:
        """Rows per state (every state present, 0 when none)."""
        ...


@runtime_checkable
class Store(Protocol):
    """One index: the three stores over one database. Open it with node.store.open_store."""

    studies: StudyStore
    jobs: JobStore
    outbox: OutboxStore

    @property
    def node_id(self) -> str:
        """This node's id for leases (stable across restarts of the node)."""
        ...

    @property
    def target(self) -> str:
        """What open_store() takes to reach this same index from another process (a job worker): the
        storage root (SQLite) or the DSN (PostgreSQL). It may hold a password: never log it."""
        ...

    @property
    def location(self) -> str:
        """Where the index is, for messages and logs (never a password)."""
        ...

    @property
    def shared(self) -> bool:
        """True when other nodes may use this index and the same storage root at the same time: then a
        starting node must not remove another node's files in flight (node.service.recover)."""
        ...

    def ping(self) -> None:
        """Health check: one round trip to the database in a transaction; raises when it fails."""
        ...

    def close(self) -> None: ...
