"""The SQLite schema and its migrations (PRAGMA user_version counts the applied ones).

A migration is appended, never edited: an index written by an older node is brought forward at
open. Paths in `instances.path` and `outbox.path` are relative to storage.root.
"""

from __future__ import annotations

import sqlite3

from node.store.sql.schema import SQLITE, migrations

MIGRATIONS: tuple[str, ...] = migrations(SQLITE)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version, one migration per transaction; returns it. The version
    is read inside each write transaction, so processes opening the index at once (listener
    processes) apply each migration exactly once."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < len(MIGRATIONS):
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if version >= len(MIGRATIONS) - 1:
            return len(MIGRATIONS)
