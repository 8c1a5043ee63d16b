"""The outbox in SQLite (node.store.base.OutboxStore): deliveries claimed under leases."""

from __future__ import annotations

import time
from collections.abc import Sequence

from node.store import rows as convert
from node.store.base import LEASE_S
from node.store.records import DeliveryRow, OutboxItem
from node.store.sqlite.db import Db
from node.store.states import DeliveryState


class SqliteOutbox:
    def __init__(self, db: Db) -> None:
        self._db = db

    def claim(self, node_id: str, limit: int, lease_s: float = LEASE_S,
              now: float | None = None) -> dict[str, list[OutboxItem]]:
        now = time.time() if now is None else now
        with self._db.write() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM outbox WHERE state=? AND next_attempt_at<=?"
                                           " AND (lease_expires_at IS NULL OR lease_expires_at<?) ORDER BY id LIMIT ?",
                                           (DeliveryState.PENDING, now, now, limit))]
            c.executemany("UPDATE outbox SET lease_owner=?, lease_expires_at=? WHERE id=?",
                          [(node_id, now + lease_s, i) for i in ids])
            claimed = [c.execute("SELECT * FROM outbox WHERE id=?", (i,)).fetchone() for i in ids]
        return convert.claimed(claimed)

    def renew(self, item_ids: Sequence[int], node_id: str, lease_s: float = LEASE_S,
              now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._db.write() as c:
            return sum(c.execute("UPDATE outbox SET lease_expires_at=? WHERE id=? AND state=? AND lease_owner=?",
                                 (now + lease_s, i, DeliveryState.PENDING, node_id)).rowcount for i in item_ids)

    def record_outcome(self, item_id: int, state: DeliveryState, error: str | None = None,
                       warning: str | None = None, next_attempt_at: float | None = None,
                       node_id: str | None = None) -> None:
        now = time.time()
        state = DeliveryState(state)
        delivered = state == DeliveryState.DELIVERED
        with self._db.write() as c:
            c.execute(
                "UPDATE outbox SET state=?, attempts=attempts+1, last_error=?, warning=?,"
                " next_attempt_at=COALESCE(?, next_attempt_at), delivered_at=?, lease_owner=NULL, lease_expires_at=NULL"
                " WHERE id=? AND (state<>? OR ?) AND (? OR ? IS NULL OR lease_owner IS NULL OR lease_owner=?)",
                (state, error, warning, next_attempt_at, now if delivered else None, item_id,
                 DeliveryState.SUPERSEDED, delivered, delivered, node_id, node_id))

    def release_leases(self, node_id: str) -> int:
        # One node per SQLite index: every lease was this node's, whatever id it ran under.
        with self._db.write() as c:
            return c.execute("UPDATE outbox SET lease_owner=NULL, lease_expires_at=NULL"
                             " WHERE lease_owner IS NOT NULL").rowcount

    def rows(self, job_id: int | None = None) -> list[DeliveryRow]:
        if job_id is None:
            return [convert.delivery(r) for r in self._db.rows("SELECT * FROM outbox ORDER BY id")]
        return [convert.delivery(r) for r in self._db.rows("SELECT * FROM outbox WHERE job_id=? ORDER BY id",
                                                           (job_id,))]

    def resend_dead(self, job_id: int) -> int:
        now = time.time()
        with self._db.write() as c:
            return c.execute("UPDATE outbox SET state=?, attempts=0, next_attempt_at=?, created_at=?, last_error=NULL,"
                             " lease_owner=NULL, lease_expires_at=NULL WHERE job_id=? AND state=?",
                             (DeliveryState.PENDING, now, now, job_id, DeliveryState.DEAD)).rowcount

    def needed_paths(self, study_uid: str) -> list[str]:
        return [r[0] for r in self._db.rows("SELECT path FROM outbox WHERE study_uid=? AND state IN (?,?) ORDER BY id",
                                            (study_uid, DeliveryState.PENDING, DeliveryState.DEAD))]

    def counts(self) -> dict[DeliveryState, int]:
        return convert.counts(DeliveryState, self._db.rows("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state"))
