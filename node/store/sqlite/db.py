"""One SQLite connection shared by the three stores of a node process, and its transactions.

WAL mode lets the listener write while workers and the CLI read. synchronous=NORMAL: a commit
survives a process crash (kill -9) at once and is flushed at checkpoints; after a power loss the
last commits may roll back, so the spool, whose files are fsynced before any acknowledgement, is
the durable record and start-up reconciliation re-indexes any instance file the index lost (see
docs/durability.md). Commits that precede a deletion of files are `durable` (synchronous=FULL).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from node.store.records import StoreUnavailable
from node.store.sql.dialect import Dialect
from node.store.sqlite.schema import migrate

INDEX_FILE = "index.sqlite3"


def _one_writer(_c: object, _study_uid: str) -> None:
    """BEGIN IMMEDIATE holds SQLite's one write lock for the transaction: no study lock is needed."""


# One node per index, one writer at a time: no row locks, this process's clock for leases.
DIALECT = Dialect(placeholder="?", for_update="", skip_locked="", server_clock=None, shared=False,
                  lock_study=_one_writer)


@contextmanager
def translated() -> Iterator[None]:
    """sqlite3's operational errors (locked past busy_timeout, read-only, disk I/O) as StoreUnavailable."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(str(exc)) from exc


def connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    if not read_only:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Db:
    """The connection, this process's lock (re-entrant: one thread at a time uses the connection) and
    transactions. BEGIN IMMEDIATE takes SQLite's write lock at once, so a read-check-write method
    never loses a race to another process (listener processes share the index file)."""

    def __init__(self, root: Path, read_only: bool = False) -> None:
        if not read_only:
            root.mkdir(parents=True, exist_ok=True)
        self.path = root / INDEX_FILE
        self.dialect = DIALECT
        self.read_only = read_only
        with translated():
            self.conn = connect(self.path, read_only)
            if not read_only:
                migrate(self.conn)
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under this process's lock; ROLLBACK on any exception.
        durable: the commit is fsynced (synchronous=FULL) before it returns."""
        with self.lock, translated():
            if durable:
                self.conn.execute("PRAGMA synchronous=FULL")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            finally:
                if durable:
                    self.conn.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one consistent state."""
        with self.lock, translated():
            self.conn.execute("BEGIN")
            try:
                yield self.conn
            finally:
                self.conn.execute("COMMIT")

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self.lock, translated():
            return self.conn.execute(sql, params).fetchall()

    def row(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self.lock, translated():
            return self.conn.execute(sql, params).fetchone()
