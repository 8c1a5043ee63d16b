"""A node starting on a storage root shared with other nodes (PostgreSQL index, docs/scale.md) removes only
abandoned partial files and staging folders, never another node's transfer or job in flight."""

from __future__ import annotations

import os
import time
from pathlib import Path

from node import results_store
from node.ingest.spool import Spool
from node.store import open_store

UID = "1.2.826.0.1.3680043.8.498.1"


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_shared_root_keeps_files_in_flight_and_removes_abandoned_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    in_flight, abandoned = spool.new_temp_path(), spool.new_temp_path()
    in_flight.write_bytes(b"another node is receiving this")
    abandoned.write_bytes(b"left by a crash two days ago")
    _age(abandoned, 2 * 86400)
    working = results_store.new_staging(tmp_path, UID)
    (working / "results.json").write_text("{}")
    old = results_store.new_staging(tmp_path, UID)
    _age(old, 2 * 86400)

    assert spool.clear_temp(older_than_s=86400) == 1
    assert results_store.clear_staging(tmp_path, older_than_s=86400) == 1
    assert in_flight.is_file() and not abandoned.exists()
    assert working.is_dir() and not old.exists()

    # One node alone (the embedded index): everything left at start is its own and goes.
    assert spool.clear_temp() == 1 and results_store.clear_staging(tmp_path) == 1
    assert not in_flight.exists() and not working.exists()


def test_the_embedded_index_is_not_shared(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        assert store.shared is False
    finally:
        store.close()
