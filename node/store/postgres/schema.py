"""The PostgreSQL schema: the same tables, columns and migrations as the SQLite index
(node.store.sqlite.schema), in PostgreSQL's types; `schema_version` counts the applied migrations.

A migration is appended, never edited, and numbered like its SQLite twin, so both backends are at the
same schema version. Several nodes may start at once: the migrations run under a transaction-level
advisory lock, so one node migrates and the others find the schema current.
"""

from __future__ import annotations

from typing import Any

from node.store.sql.schema import POSTGRES, migrations

# pg_advisory_xact_lock(class, key) namespaces of this node: the int4 pair's first half.
LOCK_CLASS_MIGRATE = 1800
LOCK_CLASS_STUDY = 1801

MIGRATIONS: tuple[str, ...] = migrations(POSTGRES)


def migrate(conn: Any) -> int:
    """Bring the schema to the newest version in one transaction; returns it."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_CLASS_MIGRATE,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
            version = 0
        else:
            version = int(row["version"])
        for script in MIGRATIONS[version:]:
            conn.execute(script)
        conn.execute("UPDATE schema_version SET version=%s", (len(MIGRATIONS),))
    return len(MIGRATIONS)
