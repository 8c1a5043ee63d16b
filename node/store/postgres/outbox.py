"""The outbox in PostgreSQL (node.store.base.OutboxStore): deliveries claimed under leases by many nodes.

claim: `SELECT ... FOR UPDATE SKIP LOCKED` over the due rows without a live lease, so senders on
several nodes each take different rows at once; the lease (owner, expiry on the server's clock) is
written in the same statement. A node that died while sending leaves rows whose lease expires: any
node claims them then (a C-STORE of the same SOP Instance UID twice is safe at the PACS, PS3.4 B.2.3,
but each row is sent by one node at a time).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from node.store import rows
from node.store.base import LEASE_S
from node.store.postgres.db import NOW_SQL, Db
from node.store.records import DeliveryRow, OutboxItem
from node.store.states import DeliveryState


class PgOutbox:
    def __init__(self, db: Db) -> None:
        self._db = db

    def claim(self, node_id: str, limit: int, lease_s: float = LEASE_S,
              now: float | None = None) -> dict[str, list[OutboxItem]]:
        with self._db.write() as c:
            claimed = c.execute(
                f"UPDATE outbox SET lease_owner=%(node)s, lease_expires_at={NOW_SQL} + %(lease)s"
                " WHERE id IN (SELECT id FROM outbox WHERE state=%(pending)s"
                f" AND next_attempt_at<={NOW_SQL} AND (lease_expires_at IS NULL OR lease_expires_at<{NOW_SQL})"
                " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING *",
                {"now": now, "node": node_id, "lease": lease_s, "pending": DeliveryState.PENDING,
                 "limit": limit}).fetchall()
        return rows.claimed(claimed)

    def renew(self, item_ids: Sequence[int], node_id: str, lease_s: float = LEASE_S,
              now: float | None = None) -> int:
        with self._db.write() as c:
            return c.execute(f"UPDATE outbox SET lease_expires_at={NOW_SQL} + %(lease)s WHERE id = ANY(%(ids)s)"
                             " AND state=%(pending)s AND lease_owner=%(node)s",
                             {"now": now, "lease": lease_s, "ids": list(item_ids), "pending": DeliveryState.PENDING,
                              "node": node_id}).rowcount

    def record_outcome(self, item_id: int, state: DeliveryState, error: str | None = None,
                       warning: str | None = None, next_attempt_at: float | None = None,
                       node_id: str | None = None) -> None:
        now = time.time()
        state = DeliveryState(state)
        delivered = state == DeliveryState.DELIVERED
        with self._db.write() as c:
            c.execute(
                "UPDATE outbox SET state=%(state)s, attempts=attempts+1, last_error=%(error)s, warning=%(warning)s,"
                " next_attempt_at=COALESCE(%(next)s::double precision, next_attempt_at), delivered_at=%(at)s,"
                " lease_owner=NULL, lease_expires_at=NULL"
                " WHERE id=%(id)s AND (state<>%(superseded)s OR %(delivered)s)"
                " AND (%(delivered)s OR %(node)s::text IS NULL OR lease_owner IS NULL OR lease_owner=%(node)s)",
                {"state": state, "error": error, "warning": warning, "next": next_attempt_at,
                 "at": now if delivered else None, "id": item_id, "superseded": DeliveryState.SUPERSEDED,
                 "delivered": delivered, "node": node_id})

    def release_leases(self, node_id: str) -> int:
        # Shared index: only this node's leases; other nodes' rows stay theirs until their lease expires.
        with self._db.write() as c:
            return c.execute("UPDATE outbox SET lease_owner=NULL, lease_expires_at=NULL WHERE lease_owner=%s",
                             (node_id,)).rowcount

    def rows(self, job_id: int | None = None) -> list[DeliveryRow]:
        if job_id is None:
            return [rows.delivery(r) for r in self._db.rows("SELECT * FROM outbox ORDER BY id")]
        return [rows.delivery(r) for r in self._db.rows("SELECT * FROM outbox WHERE job_id=%s ORDER BY id", (job_id,))]

    def resend_dead(self, job_id: int) -> int:
        now = time.time()
        with self._db.write() as c:
            return c.execute("UPDATE outbox SET state=%s, attempts=0, next_attempt_at=%s, created_at=%s,"
                             " last_error=NULL, lease_owner=NULL, lease_expires_at=NULL WHERE job_id=%s AND state=%s",
                             (DeliveryState.PENDING, now, now, job_id, DeliveryState.DEAD)).rowcount

    def needed_paths(self, study_uid: str) -> list[str]:
        return [r["path"] for r in self._db.rows(
            "SELECT path FROM outbox WHERE study_uid=%s AND state IN (%s,%s) ORDER BY id",
            (study_uid, DeliveryState.PENDING, DeliveryState.DEAD))]

    def counts(self) -> dict[DeliveryState, int]:
        return rows.counts(DeliveryState, self._db.rows("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state"))
