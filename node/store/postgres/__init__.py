"""The shared PostgreSQL index: studies, job queue and outbox for several nodes (issue 18, docs/scale.md).

Same interface (node.store.base.Store), same SQL (node.store.sql) and same schema versions as the
embedded SQLite index; the differences are what a shared index needs (node.store.postgres.db's
dialect): leases on the server's clock, SKIP LOCKED claims, row and advisory locks instead of one
process's lock, and restart recovery limited to this node's own leases. Paths in it are relative to
storage.root, which the nodes share.
"""

from __future__ import annotations

from node.store.postgres.db import Db, redact
from node.store.postgres.studies import PgStudies
from node.store.sql.store import SqlStore

__all__ = ["PostgresStore", "redact"]


class PostgresStore(SqlStore):
    """node.store.base.Store on PostgreSQL (psycopg 3)."""

    def __init__(self, dsn: str, node_id: str, read_only: bool = False) -> None:
        db = Db(dsn, read_only)
        super().__init__(db, node_id, PgStudies(db))
        self._dsn = dsn
        self._location = db.location

    @property
    def target(self) -> str:
        return self._dsn

    @property
    def location(self) -> str:
        return self._location
