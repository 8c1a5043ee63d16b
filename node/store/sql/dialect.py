"""What differs between the SQL backends, as data: everything else is written once (node.store.sql)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Dialect:
    """placeholder: the driver's parameter marker; the shared SQL is written with `?`.
    for_update: the row lock a read-check-write takes ("" for SQLite, whose BEGIN IMMEDIATE already
    holds the one write lock). skip_locked: how a claim skips rows another claimer holds.
    server_clock: SQL giving the server's epoch seconds, so the nodes of a shared index agree on
    lease expiry whatever their own clocks say; None: this process's clock (one node per index).
    shared: several nodes use the index, so restart recovery touches only this node's leases.
    lock_study: holds off every other publication or result deletion of a study until the
    transaction ends (a no-op where the transaction's write lock already does)."""

    placeholder: str
    for_update: str
    skip_locked: str
    server_clock: str | None
    shared: bool
    lock_study: Callable[[Any, str], None]

    def sql(self, text: str) -> str:
        """`?` placeholders to the driver's (the shared SQL holds no `?` or `%` otherwise)."""
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def clock(self, now: float | None) -> tuple[str, float | None]:
        """The time leases are reckoned in, as (SQL with one `?`, its parameter): the caller's `now`
        (tests), else the server's clock where the index is shared (read by each statement itself,
        no extra round trip), else this process's clock."""
        if self.server_clock is None:
            return "?", time.time() if now is None else now
        return f"COALESCE(CAST(? AS DOUBLE PRECISION), {self.server_clock})", now

    def marks(self, n: int) -> str:
        """`?,?,...` for an IN list of n values."""
        return ",".join("?" * n)


class Db(Protocol):
    """A backend's connection: one transaction per store method, under this process's lock. Its
    row/rows take the shared SQL (`?` placeholders); a row is indexable by column name."""

    dialect: Dialect
    lock: Any

    def write(self, durable: bool = False) -> AbstractContextManager[Any]: ...

    def read(self) -> AbstractContextManager[Any]: ...

    def rows(self, sql: str, params: Any = ()) -> list[Any]: ...

    def row(self, sql: str, params: Any = ()) -> Any: ...

    def close(self) -> None: ...


class SqlPart:
    """One of a store's three parts (studies, jobs, outbox) over the backend's Db and its dialect."""

    def __init__(self, db: Db) -> None:
        self._db = db
        self._d = db.dialect

    def _x(self, c: Any, sql: str, params: Any = ()) -> Any:
        """Execute the shared SQL (`?` placeholders) in the transaction c."""
        return c.execute(self._d.sql(sql), params)
