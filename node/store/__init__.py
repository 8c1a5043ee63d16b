"""Persistence: the one owner of the index (studies, jobs, outbox). See node.store.base for the rules.

    store = open_store(config)          # or open_store(storage_root) for the embedded SQLite index
    store.studies.add_instance(...); store.jobs.claim(store.node_id); store.outbox.claim(...)
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from node.store.base import LEASE_S, JobStore, OutboxStore, PublishStep, Store, StudyStore
from node.store.records import (
    Delivery,
    DeliveryRow,
    InstanceLocation,
    InstanceRecord,
    Job,
    LeaseLost,
    OutboxItem,
    StoreUnavailable,
    StudyBeingDeleted,
    StudyInfo,
)
from node.store.states import DeliveryState, JobState, StudyState

__all__ = [
    "LEASE_S", "Delivery", "DeliveryRow", "DeliveryState", "InstanceLocation", "InstanceRecord", "Job", "JobState",
    "JobStore", "LeaseLost", "OutboxItem", "OutboxStore", "PublishStep", "Store", "StoreUnavailable",
    "StudyBeingDeleted", "StudyInfo", "StudyState", "StudyStore", "default_node_id", "open_store",
]


def default_node_id() -> str:
    """The host name: stable across restarts, distinct between the machines of a shared index."""
    return socket.gethostname() or "node"


def open_store(target: Any, *, node_id: str | None = None, read_only: bool = False) -> Store:
    """The index the configuration names. `target`: a NodeConfig (its `index` section chooses the
    backend: SQLite under storage.root, or PostgreSQL), a storage root (the embedded SQLite index in
    it) or a PostgreSQL DSN (postgresql://...).
    read_only: a worker process that only reads (no migration, no writes)."""
    if isinstance(target, str) and target.startswith(("postgresql://", "postgres://")):
        from node.store.postgres import PostgresStore

        return PostgresStore(target, node_id=node_id or default_node_id(), read_only=read_only)
    index = None if isinstance(target, str | Path) else getattr(target, "index", None)
    if index is not None and index.backend == "postgresql":
        from node.store.postgres import PostgresStore

        # Several nodes may share one host: the DICOM port tells them apart by default.
        return PostgresStore(index.resolve_dsn(), node_id=node_id or index.node_id
                             or f"{default_node_id()}:{target.node.port}", read_only=read_only)
    from node.store.sqlite import SqliteStore

    root = Path(target) if isinstance(target, str | Path) else Path(target.storage.root)
    return SqliteStore(root.resolve(), node_id=node_id or default_node_id(), read_only=read_only)
