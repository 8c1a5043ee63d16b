"""One PostgreSQL connection per node process, shared by its three stores, and its transactions.

Every method of a store is one transaction (READ COMMITTED; row locks, SKIP LOCKED claims and
advisory locks make the read-check-write methods safe between nodes). A connection the server or
the network dropped is replaced at the next transaction; the transaction that saw it break raises
StoreUnavailable (the caller answers "retry later") and changed nothing: psycopg's operational
errors (server gone, admin shutdown, serialization failure, deadlock) never leak out.

Lease times come from the database server's clock (DIALECT.server_clock) unless a test passes `now`: the nodes
of a shared index then agree on when a lease expires, whatever their own clocks say.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from node.store.postgres.schema import LOCK_CLASS_STUDY, migrate
from node.store.records import StoreUnavailable
from node.store.sql.dialect import Dialect


def study_lock(c: Any, study_uid: str) -> None:
    """Hold off every other publication or result deletion of the study until this transaction ends."""
    c.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS_STUDY, study_uid))


# A shared index: row locks, SKIP LOCKED claims, leases on the server's clock (the nodes agree on
# when a lease expires whatever their own clocks say), restart recovery of this node's leases only.
DIALECT = Dialect(placeholder="%s", for_update=" FOR UPDATE", skip_locked=" FOR UPDATE SKIP LOCKED",
                  server_clock="extract(epoch from clock_timestamp())", shared=True, lock_study=study_lock)


def redact(dsn: str) -> str:
    """A DSN fit for logs and messages: user, host, port and database, never the password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable DSN)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


class Db:
    """The connection and this process's lock (one thread at a time uses the connection)."""

    def __init__(self, dsn: str, read_only: bool = False, connect_timeout_s: int = 10) -> None:
        self._dsn = dsn
        self.location = redact(dsn)
        self.read_only = read_only
        self.dialect = DIALECT
        self._connect_timeout_s = connect_timeout_s
        self.lock = threading.RLock()
        self.conn = self._connect()
        if not read_only:
            migrate(self.conn)

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        try:
            # autocommit: every transaction is an explicit `with conn.transaction()` block; no
            # statement leaves a transaction open behind it.
            conn = psycopg.connect(self._dsn, row_factory=dict_row, connect_timeout=self._connect_timeout_s,
                                   autocommit=True, application_name="iodine-node")
        except psycopg.OperationalError as exc:
            # psycopg's message holds no password; the DSN is named by its redacted form only.
            raise StoreUnavailable(f"cannot connect to the index {self.location}: {exc}") from None
        if self.read_only:
            conn.read_only = True
        return conn

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def write(self, durable: bool = False, pipeline: bool = False) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """One transaction under this process's lock: COMMIT at the end, ROLLBACK on any exception.
        PostgreSQL's commit is durable (synchronous_commit=on, the default) before it returns, so
        `durable` asks nothing more.
        pipeline: statements (BEGIN too) are sent without waiting for each answer (libpq pipeline
        mode); a fetch waits for everything sent before it. For hot paths: a round trip per fetch,
        not per statement."""
        with self.lock:
            if self.conn.closed or self.conn.broken:
                self.conn = self._connect()
            try:
                with self.conn.pipeline() if pipeline else nullcontext(), self.conn.transaction():
                    yield self.conn
            except psycopg.OperationalError as exc:
                raise StoreUnavailable(f"index {self.location}: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A read-only REPEATABLE READ transaction: several SELECTs see one consistent state."""
        with self.write() as c:
            c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield c

    def rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """sql: the shared SQL (`?` placeholders, node.store.sql)."""
        with self.write() as c:
            return c.execute(DIALECT.sql(sql), params or None).fetchall()

    def row(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        """sql: the shared SQL (`?` placeholders, node.store.sql)."""
        with self.write() as c:
            return c.execute(DIALECT.sql(sql), params or None).fetchone()
