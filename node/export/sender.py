"""The outbox sender: delivers due result objects, one batch (one association) per destination.

Retries back off exponentially with jitter (export.retry); after give_up_after_h an object is a
dead letter, visible in `iodine-node jobs` and re-sent with `iodine-node jobs retry ID`. Delivered
objects are never sent again: each outcome is committed as its response arrives. Each round's
items are claimed under a lease of this node (renewed while a long batch runs): on a shared index
a node that dies mid-batch leaves the rest to another node once the lease expired.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from pathlib import Path

from node.audit import AuditLog
from node.config import NodeConfig
from node.crashpoints import crash_point
from node.export.base import DEAD, DELIVERED, RETRY, Outcome, Parcel, Target, make_target
from node.metrics import Metrics
from node.periodic import Periodic
from node.store import LEASE_S, DeliveryState, OutboxItem, Store

log = logging.getLogger(__name__)

# Fault injection for crash tests: the sender waits this long before its first round.
FAULT_DELAY_ENV = "IODINE_NODE_FAULT_EXPORT_DELAY_S"


def backoff_s(attempts: int, first_s: float, max_s: float, rng: random.Random) -> float:
    """Wait before the next try after `attempts` failures: first_s x 2^(attempts-1), capped, +-50 %."""
    base = min(max_s, first_s * 2 ** max(attempts - 1, 0))
    return base * rng.uniform(0.5, 1.5)


def intact(path: Path, sha256: str | None) -> str | None:
    """Why a result file cannot be sent as published (None: it can). Retried, not dead-lettered:
    a restored file or disk makes it sendable; export.retry.give_up_after_h ends the tries."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"result file missing or unreadable: {exc.strerror or exc}"
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        return f"result file missing or unreadable: {path.name} is not what was published (torn or changed)"
    return None


class Sender:
    def __init__(self, store: Store, storage_root: Path, config: NodeConfig, metrics: Metrics | None = None,
                 audit: AuditLog | None = None, lease_s: float = LEASE_S) -> None:
        self.store = store
        self.lease_s = lease_s
        self.metrics = metrics
        self.audit = audit
        self.root = storage_root
        self.config = config
        self.destinations = {d.name: d for d in config.destinations}
        self._targets: dict[str, Target] = {}
        self._rng = random.Random()
        delay = float(os.environ.get(FAULT_DELAY_ENV, "0") or 0)
        self._periodic = Periodic("export", self.send_due, config.export.poll_s, initial_delay_s=delay)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def _target(self, name: str) -> Target:
        if name not in self._targets:
            self._targets[name] = make_target(self.destinations[name], self.config)
        return self._targets[name]

    def send_due(self, now: float | None = None) -> int:
        """One round: every destination's due items; returns how many were delivered."""
        now = time.time() if now is None else now
        delivered = 0
        claimed = self.store.outbox.claim(self.store.node_id, self.config.export.batch_size, self.lease_s, now=now)
        renewed_at = time.monotonic()
        for name, items in claimed.items():
            if name not in self.destinations:
                for item in items:
                    self._outcome(item.id, DEAD, f"destination {name!r} is no longer configured")
                continue
            by_id = {i.id: i for i in items}
            recorded: dict[int, Outcome] = {}
            for item in items:  # a file that is not what was published (torn, changed, gone) is never sent
                problem = intact(self.root / item.path, item.sha256)
                if problem:
                    recorded[item.id] = Outcome(RETRY, problem)
                    self._record_one(name, item, recorded[item.id])
            parcels = [Parcel(i.id, self.root / i.path, i.sop_instance_uid, i.sop_class_uid, i.study_uid)
                       for i in items if i.id not in recorded]

            def report(item_id: int, outcome: Outcome, name: str = name, by_id: dict = by_id,
                       recorded: dict = recorded) -> None:
                # Committed as each response arrives: a crash later in the batch re-sends only the rest.
                nonlocal renewed_at
                if item_id in by_id and item_id not in recorded:
                    recorded[item_id] = outcome
                    self._record_one(name, by_id[item_id], outcome)
                    crash_point("export-recorded")
                if time.monotonic() - renewed_at > self.lease_s / 3:  # a long batch keeps its leases
                    renewed_at = time.monotonic()
                    self.store.outbox.renew([i for i in by_id if i not in recorded], self.store.node_id,
                                            self.lease_s)

            try:
                outcomes = self._target(name).send(parcels, report) if parcels else {}
            except Exception as exc:
                log.exception("destination %s failed", name)
                outcomes = {p.item_id: Outcome(RETRY, f"{type(exc).__name__}: {exc}") for p in parcels}
            for item in items:
                if item.id not in recorded:
                    recorded[item.id] = outcomes.get(item.id, Outcome(RETRY, "no outcome reported"))
                    self._record_one(name, item, recorded[item.id])
            delivered += self._summarise(name, items, recorded)
        return delivered

    def _outcome(self, item_id: int, state: DeliveryState, error: str | None = None, warning: str | None = None,
                 next_attempt_at: float | None = None) -> None:
        self.store.outbox.record_outcome(item_id, state, error, warning, next_attempt_at, self.store.node_id)

    def _record_one(self, name: str, item: OutboxItem, outcome: Outcome) -> None:
        retry = self.config.export.retry
        now = time.time()
        if self.metrics:
            self.metrics.inc("iodine_export_attempts_total")
            if outcome.state != DELIVERED:
                self.metrics.inc("iodine_export_failures_total")
        if outcome.state == DELIVERED:
            self._outcome(item.id, DELIVERED, warning=outcome.warning)
            if outcome.warning:
                log.warning("job %d: %s delivered to %s with warning: %s", item.job_id, item.kind, name,
                            outcome.warning)
        elif outcome.state == DEAD:
            self._outcome(item.id, DEAD, outcome.error)
            log.error("job %d: %s for study %s is a dead letter at %s: %s", item.job_id, item.kind,
                      item.study_uid, name, outcome.error)
        elif now - item.created_at > retry.give_up_after_h * 3600:
            self._outcome(item.id, DEAD, f"gave up after {retry.give_up_after_h:g} h: {outcome.error}")
            log.error("job %d: %s for study %s given up at %s after %d attempts: %s", item.job_id, item.kind,
                      item.study_uid, name, item.attempts + 1, outcome.error)
        else:
            wait = backoff_s(item.attempts + 1, retry.first_s, retry.max_s, self._rng)
            self._outcome(item.id, DeliveryState.PENDING, outcome.error, next_attempt_at=now + wait)
            log.warning("job %d: %s to %s failed (attempt %d), next try in %.0f s: %s", item.job_id, item.kind,
                        name, item.attempts + 1, wait, outcome.error)

    def _summarise(self, name: str, items: list[OutboxItem], outcomes: dict[int, Outcome]) -> int:
        done: dict[tuple[str, int], int] = {}
        for item in items:
            if outcomes[item.id].state == DELIVERED:
                done[(item.study_uid, item.job_id)] = done.get((item.study_uid, item.job_id), 0) + 1
        for (study, job), n in done.items():
            log.info("job %d: delivered %d object(s) of study %s to %s", job, n, study, name)
            if self.audit:
                self.audit.event("results-exported", job=job, study_instance_uid=study, destination=name, objects=n)
        return sum(done.values())
