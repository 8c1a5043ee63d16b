"""The job queue in PostgreSQL (node.store.base.JobStore): claims are leases, shared by many nodes.

claim: `SELECT ... FOR UPDATE SKIP LOCKED` picks the oldest claimable job that no other claimer has
locked at this instant, so N nodes claiming at once each get a different job and none waits.
queue: the study's row is locked (FOR UPDATE) while its state and last_received are checked, so
when the completion monitor runs on every node, one queues the job and the others see the study
queued and do nothing; the partial unique index one_live_job_per_study backs this up.
publish_results: the job's row and the study's advisory lock are held while the files are put in
place and the outbox rows are inserted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from node.store import rows
from node.store.base import LEASE_S, PublishStep
from node.store.postgres.db import NOW_SQL, Db
from node.store.postgres.studies import study_lock
from node.store.records import Delivery, Job, LeaseLost
from node.store.states import DeliveryState, JobState, StudyState


def _end_superseded(c: Any, job_id: int, superseded_by: int | None, now: float) -> None:
    c.execute("UPDATE jobs SET state=%s, finished_at=%s, error=%s, lease_owner=NULL, lease_expires_at=NULL"
              " WHERE id=%s", (JobState.SUPERSEDED, now, f"superseded by job {superseded_by} while it ran; its results"
                                                        " were not published", job_id))


def _insert_deliveries(c: Any, job_id: int, study_uid: str, deliveries: Sequence[Delivery], now: float) -> None:
    if not deliveries:
        return
    # Earlier results of the study not yet delivered (this job's earlier attempt too): never sent now.
    c.execute("UPDATE outbox SET state=%s, last_error=%s, lease_owner=NULL, lease_expires_at=NULL"
              " WHERE study_uid=%s AND state IN (%s,%s)",
              (DeliveryState.SUPERSEDED, f"superseded by the results of job {job_id}", study_uid,
               DeliveryState.PENDING, DeliveryState.DEAD))
    with c.cursor() as cur:
        cur.executemany(
            "INSERT INTO outbox (job_id, study_uid, destination, kind, path, sop_instance_uid, sop_class_uid,"
            " state, attempts, next_attempt_at, created_at, sha256) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,0,%s,%s,%s)"
            " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET job_id=excluded.job_id,"
            " path=excluded.path, sha256=excluded.sha256,"
            " state=CASE WHEN outbox.state=%s THEN outbox.state ELSE excluded.state END,"
            " attempts=0, next_attempt_at=excluded.next_attempt_at, created_at=excluded.created_at,"
            " last_error=NULL, lease_owner=NULL, lease_expires_at=NULL",
            [(job_id, study_uid, d.destination, d.kind, d.path, d.sop_instance_uid, d.sop_class_uid,
              DeliveryState.PENDING, now, now, d.sha256, DeliveryState.DELIVERED)
             for d in (Delivery(*t) for t in deliveries)])


class PgJobs:
    def __init__(self, db: Db) -> None:
        self._db = db

    def queue(self, kind: str, study_uid: str, payload: dict[str, Any], warnings: Sequence[str],
              expect_last_received: float) -> int | None:
        now = time.time()
        with self._db.write() as c:
            row = c.execute("SELECT state, last_received FROM studies WHERE study_uid=%s FOR UPDATE",
                            (study_uid,)).fetchone()
            if row is None or row["state"] != StudyState.RECEIVING or row["last_received"] != expect_last_received:
                return None
            # The new id first, so every other job of the study is superseded by it before it exists
            # (at most one live job per study: a unique index holds it).
            job_id = int(c.execute("SELECT nextval(pg_get_serial_sequence('jobs', 'id')) AS id").fetchone()["id"])
            c.execute("UPDATE jobs SET state=%s, finished_at=%s, error=%s, superseded_by=%s WHERE study_uid=%s"
                      " AND state=%s AND superseded_by IS NULL",
                      (JobState.SUPERSEDED, now, "a newer job of the study replaced it", job_id, study_uid,
                       JobState.PENDING))
            c.execute("UPDATE jobs SET superseded_by=%s WHERE study_uid=%s AND superseded_by IS NULL"
                      " AND state IN (%s,%s,%s)", (job_id, study_uid, JobState.DONE, JobState.FAILED, JobState.RUNNING))
            c.execute("INSERT INTO jobs (id, kind, study_uid, state, created_at, payload, warnings)"
                      " VALUES (%s,%s,%s,%s,%s,%s,%s)",
                      (job_id, kind, study_uid, JobState.PENDING, now, json.dumps(payload), json.dumps(list(warnings))))
            c.execute("UPDATE studies SET state=%s, note=NULL WHERE study_uid=%s", (StudyState.QUEUED, study_uid))
        return job_id

    def claim(self, node_id: str, lease_s: float = LEASE_S, now: float | None = None) -> Job | None:
        args = {"now": now, "node": node_id, "lease": lease_s, "pending": JobState.PENDING,
                "running": JobState.RUNNING, "superseded": JobState.SUPERSEDED}
        with self._db.write() as c:
            # A dead node's job that a newer job replaced meanwhile is not worth taking over.
            c.execute(f"UPDATE jobs SET state=%(superseded)s, finished_at={NOW_SQL}, lease_owner=NULL,"
                      " lease_expires_at=NULL,"
                      " error='its node stopped renewing the lease after a newer job replaced it'"
                      " WHERE id IN (SELECT id FROM jobs WHERE state=%(running)s AND superseded_by IS NOT NULL"
                      f" AND lease_expires_at<{NOW_SQL} AND lease_owner<>%(node)s FOR UPDATE SKIP LOCKED)", args)
            row = c.execute(
                f"UPDATE jobs SET state=%(running)s, attempts=attempts+1, started_at={NOW_SQL}, finished_at=NULL,"
                f" error=NULL, lease_owner=%(node)s, lease_expires_at={NOW_SQL} + %(lease)s"
                " WHERE id = (SELECT id FROM jobs WHERE state=%(pending)s OR (state=%(running)s"
                f" AND lease_expires_at<{NOW_SQL} AND lease_owner<>%(node)s) ORDER BY id LIMIT 1"
                " FOR UPDATE SKIP LOCKED) RETURNING *", args).fetchone()
        return None if row is None else rows.job(row)

    def renew(self, job_id: int, node_id: str, lease_s: float = LEASE_S, now: float | None = None) -> bool:
        with self._db.write() as c:
            return c.execute(f"UPDATE jobs SET lease_expires_at={NOW_SQL} + %(lease)s WHERE id=%(id)s"
                             " AND state=%(running)s AND lease_owner=%(node)s",
                             {"now": now, "lease": lease_s, "id": job_id, "running": JobState.RUNNING,
                              "node": node_id}).rowcount == 1

    def release(self, job_id: int, node_id: str) -> bool:
        with self._db.write() as c:
            return c.execute(
                "UPDATE jobs SET state=CASE WHEN superseded_by IS NULL THEN %s ELSE %s END, started_at=NULL,"
                " lease_owner=NULL, lease_expires_at=NULL WHERE id=%s AND state=%s AND lease_owner=%s",
                (JobState.PENDING, JobState.SUPERSEDED, job_id, JobState.RUNNING, node_id)).rowcount == 1

    def publish_results(self, job_id: int, publish: PublishStep, node_id: str | None = None,
                        on_committed: Callable[[], None] | None = None) -> bool:
        now = time.time()
        with self._db.lock:  # held until on_committed returned
            with self._db.write() as c:
                row = c.execute("SELECT study_uid FROM jobs WHERE id=%s", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(f"no job with id {job_id}")
                study_lock(c, row["study_uid"])
                row = c.execute("SELECT study_uid, superseded_by, state, lease_owner FROM jobs WHERE id=%s FOR UPDATE",
                                (job_id,)).fetchone()
                if row["superseded_by"] is not None or row["state"] == JobState.SUPERSEDED:
                    _end_superseded(c, job_id, row["superseded_by"], now)
                    return False
                if node_id is not None and row["lease_owner"] not in (None, node_id):
                    raise LeaseLost(f"job {job_id} is held by node {row['lease_owner']} now, not {node_id}")
                result, deliveries = publish()
                c.execute("UPDATE jobs SET state=%s, finished_at=%s, result=%s, error=NULL, lease_owner=NULL,"
                          " lease_expires_at=NULL WHERE id=%s", (JobState.DONE, now, json.dumps(result), job_id))
                _insert_deliveries(c, job_id, row["study_uid"], deliveries, now)
            if on_committed is not None:
                on_committed()
        return True

    def fail(self, job_id: int, error: str, node_id: str | None = None) -> bool:
        now = time.time()
        with self._db.write() as c:
            row = c.execute("SELECT superseded_by, state, lease_owner FROM jobs WHERE id=%s FOR UPDATE",
                            (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            if node_id is not None and row["lease_owner"] not in (None, node_id):
                return False
            if row["superseded_by"] is not None or row["state"] == JobState.SUPERSEDED:
                _end_superseded(c, job_id, row["superseded_by"], now)
            else:
                c.execute("UPDATE jobs SET state=%s, finished_at=%s, result=NULL, error=%s, lease_owner=NULL,"
                          " lease_expires_at=NULL WHERE id=%s", (JobState.FAILED, now, error, job_id))
        return True

    def retry(self, job_id: int) -> Job:
        with self._db.write() as c:
            row = c.execute("SELECT * FROM jobs WHERE id=%s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            if row["state"] in (JobState.PENDING, JobState.RUNNING):
                raise ValueError(f"job {job_id} is {row['state']}; only failed or done jobs can be retried")
            if row["superseded_by"] is not None:
                raise ValueError(f"job {job_id} was superseded by job {row['superseded_by']}; retry that one")
            if row["state"] == JobState.SUPERSEDED:
                raise ValueError(f"job {job_id} was superseded: new instances of its study arrived")
            return rows.job(c.execute(
                "UPDATE jobs SET state=%s, error=NULL, finished_at=NULL, lease_owner=NULL, lease_expires_at=NULL"
                " WHERE id=%s RETURNING *", (JobState.PENDING, job_id)).fetchone())

    def recover_after_restart(self, node_id: str) -> int:
        # Shared index: only this node's own running jobs; other nodes' are theirs until their lease expires.
        with self._db.write() as c:
            c.execute("UPDATE jobs SET state=%s, finished_at=%s, error=%s, lease_owner=NULL, lease_expires_at=NULL"
                      " WHERE state=%s AND superseded_by IS NOT NULL AND lease_owner=%s",
                      (JobState.SUPERSEDED, time.time(), "interrupted by a node restart after a newer job replaced it",
                       JobState.RUNNING, node_id))
            return c.execute("UPDATE jobs SET state=%s, error=%s, lease_owner=NULL, lease_expires_at=NULL"
                             " WHERE state=%s AND lease_owner=%s",
                             (JobState.PENDING, "interrupted by a node restart; queued again", JobState.RUNNING,
                              node_id)).rowcount

    def get(self, job_id: int) -> Job | None:
        row = self._db.row("SELECT * FROM jobs WHERE id=%s", (job_id,))
        return None if row is None else rows.job(row)

    def recent(self, limit: int = 100) -> list[Job]:
        return [rows.job(r) for r in self._db.rows("SELECT * FROM jobs ORDER BY id DESC LIMIT %s", (limit,))]

    def counts(self) -> dict[JobState, int]:
        return rows.counts(JobState, self._db.rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"))
