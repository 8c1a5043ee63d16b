"""The embedded SQLite index: one file (storage.root/index.sqlite3) for one node.

The three stores share one connection and this process's lock (node.store.sqlite.db); every
method is one transaction. Several processes of one node (listener processes, workers that read,
the CLI) may open the same file: SQLite's own locking serialises their writes.
"""

from __future__ import annotations

from pathlib import Path

from node.store.sql.store import SqlStore
from node.store.sqlite.db import INDEX_FILE, Db
from node.store.sqlite.studies import SqliteStudies

__all__ = ["INDEX_FILE", "SqliteStore"]


class SqliteStore(SqlStore):
    """node.store.base.Store on SQLite."""

    def __init__(self, root: Path, node_id: str, read_only: bool = False) -> None:
        db = Db(root, read_only)
        super().__init__(db, node_id, SqliteStudies(db))
        self._path = db.path

    @property
    def target(self) -> str:
        return str(self._path.parent)

    @property
    def location(self) -> str:
        return str(self._path)
