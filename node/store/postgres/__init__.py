"""The shared PostgreSQL index: studies, job queue and outbox for several nodes (issue 18, docs/scale.md).

Same interface (node.store.base.Store) and same schema versions as the embedded SQLite index; the
differences are what a shared index needs: leases on the server's clock, SKIP LOCKED claims, row
and advisory locks instead of one process's lock, and restart recovery limited to this node's own
leases. Paths in it are relative to storage.root, which the nodes share.
"""

from __future__ import annotations

from node.store.postgres.db import Db, redact
from node.store.postgres.jobs import PgJobs
from node.store.postgres.outbox import PgOutbox
from node.store.postgres.studies import PgStudies

__all__ = ["PostgresStore", "redact"]


class PostgresStore:
    """node.store.base.Store on PostgreSQL (psycopg 3)."""

    def __init__(self, dsn: str, node_id: str, read_only: bool = False) -> None:
        self._dsn = dsn
        self._db = Db(dsn, read_only)
        self._node_id = node_id
        self.studies = PgStudies(self._db)
        self.jobs = PgJobs(self._db)
        self.outbox = PgOutbox(self._db)

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def target(self) -> str:
        return self._dsn

    @property
    def shared(self) -> bool:
        return True  # several nodes, one server and one storage root (docs/scale.md)

    @property
    def location(self) -> str:
        return self._db.location

    def ping(self) -> None:
        self._db.row("SELECT 1 AS ok")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
