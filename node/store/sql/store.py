"""The Store both SQL backends are: three stores over one connection (node.store.base.Store)."""

from __future__ import annotations

from typing import Self

from node.store.sql.dialect import Db
from node.store.sql.jobs import SqlJobs
from node.store.sql.outbox import SqlOutbox
from node.store.sql.studies import SqlStudies


class SqlStore:
    """A backend gives its Db, its study store (add_instance is its own) and where it lives."""

    def __init__(self, db: Db, node_id: str, studies: SqlStudies) -> None:
        self._db = db
        self._node_id = node_id
        self.studies = studies
        self.jobs = SqlJobs(db)
        self.outbox = SqlOutbox(db)

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def shared(self) -> bool:
        """Several nodes, one index and one storage root (PostgreSQL, docs/scale.md), or one node's own."""
        return self._db.dialect.shared

    def ping(self) -> None:
        self._db.row("SELECT 1 AS ok")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
