"""The job queue (node.store.base.JobStore) in SQL both backends run: claims are leases.

claim: the oldest claimable job, locked with the dialect's `FOR UPDATE SKIP LOCKED` where several
nodes claim at once (each gets a different job and none waits); SQLite's single writer needs none.
queue: the study's row is locked while its state and last_received are checked, so when the
completion monitor runs on every node one queues the job and the others see the study queued; the
partial unique index one_live_job_per_study backs this up. publish_results: the job's row and the
study's lock are held while the files are put in place and the outbox rows are inserted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from node.store import rows
from node.store.base import LEASE_S, PublishStep
from node.store.records import Delivery, Job, LeaseLost
from node.store.sql.dialect import SqlPart
from node.store.states import DeliveryState, JobState, StudyState

_UPSERT_DELIVERY = (
    "INSERT INTO outbox (job_id, study_uid, destination, kind, path, sop_instance_uid, sop_class_uid,"
    " state, attempts, next_attempt_at, created_at, sha256) VALUES (?,?,?,?,?,?,?,?,0,?,?,?)"
    " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET job_id=excluded.job_id,"
    " path=excluded.path, sha256=excluded.sha256,"
    " state=CASE WHEN outbox.state=? THEN outbox.state ELSE excluded.state END,"
    " attempts=0, next_attempt_at=excluded.next_attempt_at, created_at=excluded.created_at,"
    " last_error=NULL, lease_owner=NULL, lease_expires_at=NULL")


class SqlJobs(SqlPart):
    def _end_superseded(self, c: Any, job_id: int, superseded_by: int | None, now: float) -> None:
        self._x(c, "UPDATE jobs SET state=?, finished_at=?, error=?, lease_owner=NULL, lease_expires_at=NULL"
                   " WHERE id=?", (JobState.SUPERSEDED, now, f"superseded by job {superseded_by} while it ran; its"
                                                              " results were not published", job_id))

    def _insert_deliveries(self, c: Any, job_id: int, study_uid: str, deliveries: Sequence[Delivery],
                           now: float) -> None:
        if not deliveries:
            return
        # Earlier results of the study not yet delivered (this job's earlier attempt too): never sent now.
        self._x(c, "UPDATE outbox SET state=?, last_error=?, lease_owner=NULL, lease_expires_at=NULL"
                   " WHERE study_uid=? AND state IN (?,?)",
                (DeliveryState.SUPERSEDED, f"superseded by the results of job {job_id}", study_uid,
                 DeliveryState.PENDING, DeliveryState.DEAD))
        cur = c.cursor()
        try:
            cur.executemany(self._d.sql(_UPSERT_DELIVERY), [
                (job_id, study_uid, d.destination, d.kind, d.path, d.sop_instance_uid, d.sop_class_uid,
                 DeliveryState.PENDING, now, now, d.sha256, DeliveryState.DELIVERED)
                for d in (Delivery(*t) for t in deliveries)])
        finally:
            cur.close()

    def queue(self, kind: str, study_uid: str, payload: dict[str, Any], warnings: Sequence[str],
              expect_last_received: float) -> int | None:
        now = time.time()
        with self._db.write() as c:
            row = self._x(c, f"SELECT state, last_received FROM studies WHERE study_uid=?{self._d.for_update}",
                          (study_uid,)).fetchone()
            if row is None or row["state"] != StudyState.RECEIVING or row["last_received"] != expect_last_received:
                return None
            # Supersede first (marked -1 until the new id is known): at most one live job per study
            # (a unique index holds it).
            self._x(c, "UPDATE jobs SET state=?, finished_at=?, error=?, superseded_by=-1 WHERE study_uid=?"
                       " AND state=? AND superseded_by IS NULL",
                    (JobState.SUPERSEDED, now, "a newer job of the study replaced it", study_uid, JobState.PENDING))
            self._x(c, "UPDATE jobs SET superseded_by=-1 WHERE study_uid=? AND superseded_by IS NULL"
                       " AND state IN (?,?,?)", (study_uid, JobState.DONE, JobState.FAILED, JobState.RUNNING))
            job_id = int(self._x(
                c, "INSERT INTO jobs (kind, study_uid, state, created_at, payload, warnings) VALUES (?,?,?,?,?,?)"
                   " RETURNING id",
                (kind, study_uid, JobState.PENDING, now, json.dumps(payload), json.dumps(list(warnings)))
            ).fetchone()["id"])
            self._x(c, "UPDATE jobs SET superseded_by=? WHERE study_uid=? AND superseded_by=-1", (job_id, study_uid))
            self._x(c, "UPDATE studies SET state=?, note=NULL WHERE study_uid=?", (StudyState.QUEUED, study_uid))
        return job_id

    def claim(self, node_id: str, lease_s: float = LEASE_S, now: float | None = None) -> Job | None:
        t, at = self._d.clock(now)
        with self._db.write() as c:
            # A dead node's job that a newer job replaced meanwhile is not worth taking over.
            self._x(c, f"UPDATE jobs SET state=?, finished_at={t}, error=?, lease_owner=NULL, lease_expires_at=NULL"
                       " WHERE id IN (SELECT id FROM jobs WHERE state=? AND superseded_by IS NOT NULL"
                       f" AND lease_expires_at<{t} AND lease_owner<>?{self._d.skip_locked})",
                    (JobState.SUPERSEDED, at, "its node stopped renewing the lease after a newer job replaced it",
                     JobState.RUNNING, at, node_id))
            row = self._x(
                c, f"UPDATE jobs SET state=?, attempts=attempts+1, started_at={t}, finished_at=NULL, error=NULL,"
                   f" lease_owner=?, lease_expires_at={t} + ? WHERE id = (SELECT id FROM jobs WHERE state=? OR"
                   f" (state=? AND lease_expires_at<{t} AND lease_owner<>?) ORDER BY id LIMIT 1{self._d.skip_locked})"
                   " RETURNING *",
                (JobState.RUNNING, at, node_id, at, lease_s, JobState.PENDING, JobState.RUNNING, at,
                 node_id)).fetchone()
        return None if row is None else rows.job(row)

    def renew(self, job_id: int, node_id: str, lease_s: float = LEASE_S, now: float | None = None) -> bool:
        t, at = self._d.clock(now)
        with self._db.write() as c:
            return self._x(c, f"UPDATE jobs SET lease_expires_at={t} + ? WHERE id=? AND state=? AND lease_owner=?",
                           (at, lease_s, job_id, JobState.RUNNING, node_id)).rowcount == 1

    def release(self, job_id: int, node_id: str) -> bool:
        with self._db.write() as c:
            return self._x(
                c, "UPDATE jobs SET state=CASE WHEN superseded_by IS NULL THEN ? ELSE ? END, started_at=NULL,"
                   " lease_owner=NULL, lease_expires_at=NULL WHERE id=? AND state=? AND lease_owner=?",
                (JobState.PENDING, JobState.SUPERSEDED, job_id, JobState.RUNNING, node_id)).rowcount == 1

    def publish_results(self, job_id: int, publish: PublishStep, node_id: str | None = None,
                        on_committed: Callable[[], None] | None = None) -> bool:
        now = time.time()
        with self._db.lock:  # held until on_committed returned
            with self._db.write() as c:
                row = self._x(c, "SELECT study_uid FROM jobs WHERE id=?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(f"no job with id {job_id}")
                self._d.lock_study(c, row["study_uid"])
                row = self._x(c, "SELECT study_uid, superseded_by, state, lease_owner FROM jobs WHERE id=?"
                                 f"{self._d.for_update}", (job_id,)).fetchone()
                if row["superseded_by"] is not None or row["state"] == JobState.SUPERSEDED:
                    self._end_superseded(c, job_id, row["superseded_by"], now)
                    return False
                if node_id is not None and row["lease_owner"] not in (None, node_id):
                    raise LeaseLost(f"job {job_id} is held by node {row['lease_owner']} now, not {node_id}")
                result, deliveries = publish()
                self._x(c, "UPDATE jobs SET state=?, finished_at=?, result=?, error=NULL, lease_owner=NULL,"
                           " lease_expires_at=NULL WHERE id=?", (JobState.DONE, now, json.dumps(result), job_id))
                self._insert_deliveries(c, job_id, row["study_uid"], deliveries, now)
            if on_committed is not None:
                on_committed()
        return True

    def fail(self, job_id: int, error: str, node_id: str | None = None) -> bool:
        now = time.time()
        with self._db.write() as c:
            row = self._x(c, f"SELECT superseded_by, state, lease_owner FROM jobs WHERE id=?{self._d.for_update}",
                          (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            if node_id is not None and row["lease_owner"] not in (None, node_id):
                return False
            if row["superseded_by"] is not None or row["state"] == JobState.SUPERSEDED:
                self._end_superseded(c, job_id, row["superseded_by"], now)
            else:
                self._x(c, "UPDATE jobs SET state=?, finished_at=?, result=NULL, error=?, lease_owner=NULL,"
                           " lease_expires_at=NULL WHERE id=?", (JobState.FAILED, now, error, job_id))
        return True

    def retry(self, job_id: int) -> Job:
        with self._db.write() as c:
            row = self._x(c, f"SELECT * FROM jobs WHERE id=?{self._d.for_update}", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            if row["state"] in (JobState.PENDING, JobState.RUNNING):
                raise ValueError(f"job {job_id} is {row['state']}; only failed or done jobs can be retried")
            if row["superseded_by"] is not None:
                raise ValueError(f"job {job_id} was superseded by job {row['superseded_by']}; retry that one")
            if row["state"] == JobState.SUPERSEDED:
                raise ValueError(f"job {job_id} was superseded: new instances of its study arrived")
            return rows.job(self._x(
                c, "UPDATE jobs SET state=?, error=NULL, finished_at=NULL, lease_owner=NULL, lease_expires_at=NULL"
                   " WHERE id=? RETURNING *", (JobState.PENDING, job_id)).fetchone())

    def recover_after_restart(self, node_id: str) -> int:
        # A shared index: only this node's own running jobs (other nodes' are theirs until their lease
        # expires). One node per index: every running job was this node's, whatever id it ran under.
        mine, owner = (" AND lease_owner=?", (node_id,)) if self._d.shared else ("", ())
        with self._db.write() as c:
            self._x(c, "UPDATE jobs SET state=?, finished_at=?, error=?, lease_owner=NULL, lease_expires_at=NULL"
                       f" WHERE state=? AND superseded_by IS NOT NULL{mine}",
                    (JobState.SUPERSEDED, time.time(), "interrupted by a node restart after a newer job replaced it",
                     JobState.RUNNING, *owner))
            return self._x(c, "UPDATE jobs SET state=?, error=?, lease_owner=NULL, lease_expires_at=NULL"
                              f" WHERE state=?{mine}",
                           (JobState.PENDING, "interrupted by a node restart; queued again", JobState.RUNNING,
                            *owner)).rowcount

    def get(self, job_id: int) -> Job | None:
        row = self._db.row("SELECT * FROM jobs WHERE id=?", (job_id,))
        return None if row is None else rows.job(row)

    def recent(self, limit: int = 100) -> list[Job]:
        return [rows.job(r) for r in self._db.rows("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]

    def counts(self) -> dict[JobState, int]:
        return rows.counts(JobState, self._db.rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"))
