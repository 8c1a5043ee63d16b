"""The embedded SQLite index: one file (storage.root/index.sqlite3) for one node.

The three stores share one connection and this process's lock (node.store.sqlite.db); every
method is one transaction. Several processes of one node (listener processes, workers that read,
the CLI) may open the same file: SQLite's own locking serialises their writes.
"""

from __future__ import annotations

from pathlib import Path

from node.store.sqlite.db import INDEX_FILE, Db
from node.store.sqlite.jobs import SqliteJobs
from node.store.sqlite.outbox import SqliteOutbox
from node.store.sqlite.studies import SqliteStudies

__all__ = ["INDEX_FILE", "SqliteStore"]


class SqliteStore:
    """node.store.base.Store on SQLite."""

    def __init__(self, root: Path, node_id: str, read_only: bool = False) -> None:
        self._db = Db(root, read_only)
        self._node_id = node_id
        self.studies = SqliteStudies(self._db)
        self.jobs = SqliteJobs(self._db)
        self.outbox = SqliteOutbox(self._db)

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def target(self) -> str:
        return str(self._db.path.parent)

    @property
    def shared(self) -> bool:
        return False  # the embedded index belongs to one node

    @property
    def location(self) -> str:
        return str(self._db.path)

    def ping(self) -> None:
        with self._db.read() as c:
            c.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
