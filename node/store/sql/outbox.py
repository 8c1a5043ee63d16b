"""The outbox (node.store.base.OutboxStore) in SQL both backends run: deliveries claimed under leases.

claim: the due rows without a live lease, locked with the dialect's `FOR UPDATE SKIP LOCKED` where
senders on several nodes claim at once (each takes different rows); the lease (owner, expiry on the
lease clock) is written in the same statement. A node that died while sending leaves rows whose
lease expires: any node claims them then (a C-STORE of the same SOP Instance UID twice is safe at
the PACS, PS3.4 B.2.3, but each row is sent by one node at a time).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from node.store import rows as convert
from node.store.base import LEASE_S
from node.store.records import DeliveryRow, OutboxItem
from node.store.sql.dialect import SqlPart
from node.store.states import DeliveryState


class SqlOutbox(SqlPart):
    def claim(self, node_id: str, limit: int, lease_s: float = LEASE_S,
              now: float | None = None) -> dict[str, list[OutboxItem]]:
        t, at = self._d.clock(now)
        with self._db.write() as c:
            claimed = self._x(
                c, f"UPDATE outbox SET lease_owner=?, lease_expires_at={t} + ? WHERE id IN (SELECT id FROM outbox"
                   f" WHERE state=? AND next_attempt_at<={t} AND (lease_expires_at IS NULL OR lease_expires_at<{t})"
                   f" ORDER BY id LIMIT ?{self._d.skip_locked}) RETURNING *",
                (node_id, at, lease_s, DeliveryState.PENDING, at, at, limit)).fetchall()
        return convert.claimed(claimed)

    def renew(self, item_ids: Sequence[int], node_id: str, lease_s: float = LEASE_S,
              now: float | None = None) -> int:
        if not item_ids:
            return 0
        t, at = self._d.clock(now)
        with self._db.write() as c:
            return self._x(c, f"UPDATE outbox SET lease_expires_at={t} + ? WHERE id IN"
                              f" ({self._d.marks(len(item_ids))}) AND state=? AND lease_owner=?",
                           (at, lease_s, *item_ids, DeliveryState.PENDING, node_id)).rowcount

    def record_outcome(self, item_id: int, state: DeliveryState, error: str | None = None,
                       warning: str | None = None, next_attempt_at: float | None = None,
                       node_id: str | None = None) -> None:
        now = time.time()
        state = DeliveryState(state)
        delivered = state == DeliveryState.DELIVERED
        # A delivery is recorded whatever happened meanwhile (the PACS has it); any other outcome only
        # on a row not superseded and not leased by another node.
        guard, guard_params = "", ()
        if not delivered:
            guard, guard_params = " AND state<>?", (DeliveryState.SUPERSEDED,)
            if node_id is not None:
                guard, guard_params = guard + " AND (lease_owner IS NULL OR lease_owner=?)", (*guard_params, node_id)
        with self._db.write() as c:
            self._x(c, "UPDATE outbox SET state=?, attempts=attempts+1, last_error=?, warning=?,"
                       " next_attempt_at=COALESCE(?, next_attempt_at), delivered_at=?, lease_owner=NULL,"
                       f" lease_expires_at=NULL WHERE id=?{guard}",
                    (state, error, warning, next_attempt_at, now if delivered else None, item_id, *guard_params))

    def release_leases(self, node_id: str) -> int:
        # A shared index: only this node's leases (other nodes' rows stay theirs until their lease
        # expires). One node per index: every lease was this node's, whatever id it ran under.
        with self._db.write() as c:
            if self._d.shared:
                return self._x(c, "UPDATE outbox SET lease_owner=NULL, lease_expires_at=NULL WHERE lease_owner=?",
                               (node_id,)).rowcount
            return self._x(c, "UPDATE outbox SET lease_owner=NULL, lease_expires_at=NULL"
                              " WHERE lease_owner IS NOT NULL").rowcount

    def rows(self, job_id: int | None = None) -> list[DeliveryRow]:
        if job_id is None:
            return [convert.delivery(r) for r in self._db.rows("SELECT * FROM outbox ORDER BY id")]
        return [convert.delivery(r) for r in self._db.rows("SELECT * FROM outbox WHERE job_id=? ORDER BY id",
                                                           (job_id,))]

    def resend_dead(self, job_id: int) -> int:
        now = time.time()
        with self._db.write() as c:
            return self._x(c, "UPDATE outbox SET state=?, attempts=0, next_attempt_at=?, created_at=?,"
                              " last_error=NULL, lease_owner=NULL, lease_expires_at=NULL WHERE job_id=? AND state=?",
                           (DeliveryState.PENDING, now, now, job_id, DeliveryState.DEAD)).rowcount

    def needed_paths(self, study_uid: str) -> list[str]:
        return [r["path"] for r in self._db.rows(
            "SELECT path FROM outbox WHERE study_uid=? AND state IN (?,?) ORDER BY id",
            (study_uid, DeliveryState.PENDING, DeliveryState.DEAD))]

    def counts(self) -> dict[DeliveryState, int]:
        return convert.counts(DeliveryState, self._db.rows("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state"))
