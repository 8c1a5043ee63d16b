"""What a job does, run inside a worker process (never in the listener's process).

`quantify` checks the selected series against the spool and records what it will process;
the quantification stage plugs in here.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from node.index import INDEX_FILE

# Fault injection for tests of crash recovery: a job sleeps this long before it works.
FAULT_SLEEP_ENV = "IODINE_NODE_FAULT_JOB_SLEEP_S"


class JobError(Exception):
    """A job that cannot complete, with a reason a person can act on."""


def _series_files(conn: sqlite3.Connection, root: Path, series_uid: str) -> list[Path]:
    rows = conn.execute("SELECT path FROM instances WHERE series_uid=? ORDER BY image_index, instance_number, path",
                        (series_uid,)).fetchall()
    return [root / r[0] for r in rows]


def run_quantify(storage_root: Path, study_uid: str, payload: dict[str, Any]) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{storage_root / INDEX_FILE}?mode=ro", uri=True, timeout=30)
    try:
        selected: list[dict[str, Any]] = []
        for pet_uid in payload.get("pet_series", []):
            files = _series_files(conn, storage_root, pet_uid)
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise JobError(f"PET series {pet_uid}: {len(missing)} indexed file(s) missing from the spool, "
                               f"e.g. {missing[0]}")
            cts = payload.get("ct_series", {}).get(pet_uid, [])
            selected.append({
                "pet_series_instance_uid": pet_uid,
                "pet_instances": len(files),
                "ct_series_instance_uids": cts,
                "ct_instances": sum(len(_series_files(conn, storage_root, c)) for c in cts),
            })
        if not selected:
            raise JobError(f"study {study_uid}: no PET series selected")
        return {"study_instance_uid": study_uid, "selected": selected}
    finally:
        conn.close()


def run_job(kind: str, storage_root: str, study_uid: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Entry point in the worker process."""
    delay = float(os.environ.get(FAULT_SLEEP_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    if kind == "quantify":
        return run_quantify(Path(storage_root), study_uid, payload)
    raise JobError(f"unknown job kind {kind!r}")
