"""The SQLite index: patients' studies, series, instances, and the job queue.

This module alone owns the schema and its migrations. WAL mode lets the listener write while
workers and the CLI read. synchronous=NORMAL: a commit survives a process crash (kill -9) at once
and is flushed at checkpoints; after a power loss the last commits may roll back, so the spool,
whose files are fsynced before any acknowledgement, is the durable record and start-up
reconciliation re-indexes any instance file the index lost (see docs/durability.md).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_FILE = "index.sqlite3"

# Job states. pending -> running -> done | failed; a pending job whose study received more data
# before it ran becomes superseded (a newer job replaces it).
PENDING, RUNNING, DONE, FAILED, SUPERSEDED = "pending", "running", "done", "failed", "superseded"

# Study states. deleting/deleted: retention (node.retention) is removing / has removed the inputs.
RECEIVING, QUEUED, NO_PET, DELETING, DELETED = "receiving", "queued", "no-pet", "deleting", "deleted"


class StudyBeingDeleted(Exception):
    """An instance of a study whose inputs retention is deleting right now: the sender retries later."""

_MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE studies (
        study_uid TEXT PRIMARY KEY,
        patient_id TEXT, issuer_of_patient_id TEXT, patient_name TEXT, patient_birth_date TEXT,
        patient_sex TEXT, accession_number TEXT, study_date TEXT, study_time TEXT,
        study_description TEXT, specific_character_set TEXT,
        state TEXT NOT NULL DEFAULT 'receiving',
        first_received REAL NOT NULL, last_received REAL NOT NULL,
        instance_count INTEGER NOT NULL DEFAULT 0,
        note TEXT
    );
    CREATE TABLE series (
        series_uid TEXT PRIMARY KEY,
        study_uid TEXT NOT NULL REFERENCES studies(study_uid),
        modality TEXT, sop_class_uid TEXT, series_number INTEGER, series_description TEXT,
        frame_of_reference_uid TEXT, number_of_slices INTEGER, image_type TEXT,
        corrected_image TEXT, units TEXT,
        first_received REAL NOT NULL, last_received REAL NOT NULL,
        instance_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX series_by_study ON series(study_uid);
    CREATE TABLE instances (
        sop_instance_uid TEXT PRIMARY KEY,
        series_uid TEXT NOT NULL REFERENCES series(series_uid),
        study_uid TEXT NOT NULL,
        sop_class_uid TEXT, transfer_syntax_uid TEXT, instance_number INTEGER, image_index INTEGER,
        path TEXT NOT NULL, size_bytes INTEGER, received_at REAL NOT NULL,
        source TEXT, calling_ae TEXT
    );
    CREATE INDEX instances_by_series ON instances(series_uid);
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL, study_uid TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, started_at REAL, finished_at REAL,
        error TEXT, payload TEXT, result TEXT, warnings TEXT, superseded_by INTEGER
    );
    CREATE INDEX jobs_by_state ON jobs(state);
    CREATE INDEX jobs_by_study ON jobs(study_uid);
    """,
    # 2: the durable outbox, one row per (result object, destination)
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL, study_uid TEXT NOT NULL, destination TEXT NOT NULL, kind TEXT NOT NULL,
        path TEXT NOT NULL, sop_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL, delivered_at REAL, last_error TEXT, warning TEXT,
        UNIQUE (destination, sop_instance_uid)
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    CREATE INDEX outbox_by_job ON outbox(job_id);
    """,
    # 3: the SHA-256 of each result file as published: a torn or changed file is never sent
    """
    ALTER TABLE outbox ADD COLUMN sha256 TEXT;
    """,
)

# Outbox states
DELIVERED, DEAD = "delivered", "dead"

# (destination, kind, path, sop_instance_uid, sop_class_uid, sha256 of the file or None)
Delivery = tuple[str | None, ...]


@dataclass(frozen=True)
class OutboxItem:
    id: int
    job_id: int
    study_uid: str
    destination: str
    kind: str
    path: str
    sop_instance_uid: str
    sop_class_uid: str
    attempts: int
    created_at: float
    sha256: str | None = None


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns it."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(_MIGRATIONS)


@dataclass(frozen=True)
class InstanceRecord:
    """What the index keeps of one received instance (already validated)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    modality: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    specific_character_set: str = ""
    series_number: int | None = None
    series_description: str = ""
    frame_of_reference_uid: str = ""
    number_of_slices: int | None = None
    image_type: str = ""
    corrected_image: str = ""
    units: str = ""
    instance_number: int | None = None
    image_index: int | None = None


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    study_uid: str
    state: str
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    warnings: list[str]
    superseded_by: int | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        return cls(
            id=row["id"], kind=row["kind"], study_uid=row["study_uid"], state=row["state"],
            attempts=row["attempts"], created_at=row["created_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], error=row["error"],
            payload=json.loads(row["payload"] or "{}"),
            result=json.loads(row["result"]) if row["result"] else None,
            warnings=json.loads(row["warnings"] or "[]"), superseded_by=row["superseded_by"],
        )


class Index:
    """Thread-safe access to the index (one connection, one writer at a time in this process)."""

    def __init__(self, storage_root: Path) -> None:
        storage_root.mkdir(parents=True, exist_ok=True)
        self.path = storage_root / INDEX_FILE
        self._conn = connect(self.path)
        self._lock = threading.RLock()
        migrate(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under this process's lock. durable: the commit is fsynced
        (synchronous=FULL) before it returns, for commits that must survive a power loss because
        files are deleted next (retention)."""
        with self._lock:
            if durable:
                self._conn.execute("PRAGMA synchronous=FULL")
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            finally:
                if durable:
                    self._conn.execute("PRAGMA synchronous=NORMAL")

    @property
    def lock(self) -> threading.RLock:
        """This process's index lock (re-entrant): held, no other thread of the process reads or writes."""
        return self._lock

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- instances ---------------------------------------------------------------------------

    def study_state(self, study_uid: str) -> str | None:
        rows = self.query("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
        return rows[0]["state"] if rows else None

    def has_instance(self, sop_instance_uid: str) -> bool:
        return bool(self.query("SELECT 1 FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)))

    def add_instance(self, rec: InstanceRecord, source: str, calling_ae: str, now: float | None = None) -> bool:
        """Index a stored instance; False if it was already there (idempotent, counted once).
        New data re-opens a study that was queued or processed: its pending job is superseded.
        Raises StudyBeingDeleted while retention deletes the study's inputs (checked under the lock
        retention claims the study with, so one of the two always sees the other)."""
        now = time.time() if now is None else now
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM instances WHERE sop_instance_uid=?", (rec.sop_instance_uid,)).fetchone():
                return False
            study = c.execute("SELECT state FROM studies WHERE study_uid=?", (rec.study_uid,)).fetchone()
            if study is not None and study["state"] == DELETING:
                raise StudyBeingDeleted(rec.study_uid)
            if study is None:
                c.execute(
                    "INSERT INTO studies (study_uid, patient_id, issuer_of_patient_id, patient_name,"
                    " patient_birth_date, patient_sex, accession_number, study_date, study_time, study_description,"
                    " specific_character_set, state, first_received, last_received)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (rec.study_uid, rec.patient_id, rec.issuer_of_patient_id, rec.patient_name,
                     rec.patient_birth_date, rec.patient_sex, rec.accession_number, rec.study_date,
                     rec.study_time, rec.study_description, rec.specific_character_set, RECEIVING, now, now),
                )
            elif study["state"] != RECEIVING:
                c.execute("UPDATE studies SET state=?, note=? WHERE study_uid=?",
                          (RECEIVING, "re-opened by new instances", rec.study_uid))
                c.execute("UPDATE jobs SET state=?, finished_at=?, error=? WHERE study_uid=? AND state=?",
                          (SUPERSEDED, now, "new instances arrived before it ran", rec.study_uid, PENDING))
            if not c.execute("SELECT 1 FROM series WHERE series_uid=?", (rec.series_uid,)).fetchone():
                c.execute(
                    "INSERT INTO series (series_uid, study_uid, modality, sop_class_uid, series_number,"
                    " series_description, frame_of_reference_uid, number_of_slices, image_type, corrected_image,"
                    " units, first_received, last_received) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (rec.series_uid, rec.study_uid, rec.modality, rec.sop_class_uid, rec.series_number,
                     rec.series_description, rec.frame_of_reference_uid, rec.number_of_slices, rec.image_type,
                     rec.corrected_image, rec.units, now, now),
                )
            c.execute(
                "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid, transfer_syntax_uid,"
                " instance_number, image_index, path, size_bytes, received_at, source, calling_ae)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (rec.sop_instance_uid, rec.series_uid, rec.study_uid, rec.sop_class_uid, rec.transfer_syntax_uid,
                 rec.instance_number, rec.image_index, rec.path, rec.size_bytes, now, source, calling_ae),
            )
            c.execute("UPDATE series SET instance_count=instance_count+1, last_received=? WHERE series_uid=?",
                      (now, rec.series_uid))
            c.execute("UPDATE studies SET instance_count=instance_count+1, last_received=? WHERE study_uid=?",
                      (now, rec.study_uid))
        return True

    # -- jobs --------------------------------------------------------------------------------

    def queue_job(self, kind: str, study_uid: str, payload: dict[str, Any], warnings: list[str],
                  expect_last_received: float) -> int | None:
        """Queue a job for a study that is still as it was assessed (no instance since); marks
        the study queued and earlier finished jobs superseded. None if the study changed."""
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT state, last_received FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if row is None or row["state"] != RECEIVING or row["last_received"] != expect_last_received:
                return None
            cur = c.execute(
                "INSERT INTO jobs (kind, study_uid, state, created_at, payload, warnings) VALUES (?,?,?,?,?,?)",
                (kind, study_uid, PENDING, now, json.dumps(payload), json.dumps(warnings)),
            )
            job_id = int(cur.lastrowid or 0)
            c.execute("UPDATE jobs SET superseded_by=? WHERE study_uid=? AND id<>? AND superseded_by IS NULL"
                      " AND state IN (?,?,?)", (job_id, study_uid, job_id, DONE, FAILED, RUNNING))
            c.execute("UPDATE studies SET state=?, note=NULL WHERE study_uid=?", (QUEUED, study_uid))
        return job_id

    def set_study_state(self, study_uid: str, state: str, note: str | None,
                        expect_last_received: float | None = None) -> bool:
        with self.transaction() as c:
            if expect_last_received is not None:
                row = c.execute("SELECT last_received FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
                if row is None or row["last_received"] != expect_last_received:
                    return False
            c.execute("UPDATE studies SET state=?, note=? WHERE study_uid=?", (state, note, study_uid))
        return True

    def claim_job(self) -> Job | None:
        """Take the oldest pending job (pending -> running, one more attempt)."""
        with self.transaction() as c:
            row = c.execute("SELECT id FROM jobs WHERE state=? ORDER BY id LIMIT 1", (PENDING,)).fetchone()
            if row is None:
                return None
            c.execute("UPDATE jobs SET state=?, attempts=attempts+1, started_at=?, finished_at=NULL, error=NULL"
                      " WHERE id=?", (RUNNING, time.time(), row["id"]))
            return Job.from_row(c.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())

    def finish_job(self, job_id: int, result: dict[str, Any] | None, error: str | None,
                   deliveries: Sequence[Delivery] = (),
                   publish: Callable[[], tuple[dict[str, Any], Sequence[Delivery]]] | None = None) -> bool:
        """Record the outcome and, in the same transaction, one outbox row per (object, destination):
        deliveries = [(destination, kind, path, sop_instance_uid, sop_class_uid[, sha256])].

        A job that a newer job of its study superseded while it ran never publishes: it ends
        'superseded' and False is returned. Otherwise `publish` (if given) runs inside the
        transaction, under the index lock, after that check: it puts the durable result files in
        place and returns (result, deliveries); the outbox rows are committed only after it.
        Undelivered rows of the study's older jobs are superseded: stale results are never sent."""
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT study_uid, superseded_by, state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            if row["superseded_by"] is not None or row["state"] == SUPERSEDED:
                c.execute("UPDATE jobs SET state=?, finished_at=?, error=? WHERE id=?",
                          (SUPERSEDED, now, f"superseded by job {row['superseded_by']} while it ran; "
                                            "its results were not published", job_id))
                return False
            if error is None and publish is not None:
                result, deliveries = publish()
            c.execute("UPDATE jobs SET state=?, finished_at=?, result=?, error=? WHERE id=?",
                      (FAILED if error else DONE, now, json.dumps(result) if result is not None else None,
                       error, job_id))
            if deliveries:  # earlier results of the study not yet delivered (this job's earlier attempt too)
                c.execute("UPDATE outbox SET state=?, last_error=? WHERE study_uid=? AND state IN (?,?)",
                          (SUPERSEDED, f"superseded by the results of job {job_id}", row["study_uid"], PENDING, DEAD))
            for destination, kind, path, sop_uid, sop_class, *digest in deliveries:
                c.execute(
                    "INSERT INTO outbox (job_id, study_uid, destination, kind, path, sop_instance_uid, sop_class_uid,"
                    " state, attempts, next_attempt_at, created_at, sha256) VALUES (?,?,?,?,?,?,?,?,0,?,?,?)"
                    " ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET job_id=excluded.job_id,"
                    " path=excluded.path, sha256=excluded.sha256,"
                    " state=CASE WHEN outbox.state=? THEN outbox.state ELSE excluded.state END,"
                    " attempts=0, next_attempt_at=excluded.next_attempt_at, created_at=excluded.created_at,"
                    " last_error=NULL",
                    (job_id, row["study_uid"], destination, kind, path, sop_uid, sop_class, PENDING, now, now,
                     digest[0] if digest else None, DELIVERED))
        return True

    # -- outbox ------------------------------------------------------------------------------

    def due_deliveries(self, now: float, limit: int) -> dict[str, list[OutboxItem]]:
        """Pending outbox rows whose time has come, per destination (oldest first)."""
        rows = self.query("SELECT * FROM outbox WHERE state=? AND next_attempt_at<=? ORDER BY id LIMIT ?",
                          (PENDING, now, limit))
        out: dict[str, list[OutboxItem]] = {}
        for r in rows:
            out.setdefault(r["destination"], []).append(OutboxItem(
                r["id"], r["job_id"], r["study_uid"], r["destination"], r["kind"], r["path"], r["sop_instance_uid"],
                r["sop_class_uid"], r["attempts"], r["created_at"], r["sha256"]))
        return out

    def delivery_outcome(self, item_id: int, state: str, error: str | None = None, warning: str | None = None,
                         next_attempt_at: float | None = None) -> None:
        """Record one send's outcome at once (a crash after it never re-sends a confirmed object).
        A row superseded meanwhile stays superseded unless it was in fact delivered."""
        with self.transaction() as c:
            c.execute("UPDATE outbox SET state=?, attempts=attempts+1, last_error=?, warning=?, next_attempt_at="
                      "COALESCE(?, next_attempt_at), delivered_at=CASE WHEN ?='delivered' THEN ? ELSE NULL END"
                      " WHERE id=? AND (state<>? OR ?=?)", (state, error, warning, next_attempt_at, state, time.time(),
                                                            item_id, SUPERSEDED, state, DELIVERED))

    def deliveries(self, job_id: int | None = None) -> list[sqlite3.Row]:
        if job_id is None:
            return self.query("SELECT * FROM outbox ORDER BY id")
        return self.query("SELECT * FROM outbox WHERE job_id=? ORDER BY id", (job_id,))

    def resend_dead(self, job_id: int) -> int:
        """Dead letters of a job back to pending (after the cause was fixed); returns how many."""
        with self.transaction() as c:
            cur = c.execute("UPDATE outbox SET state=?, attempts=0, next_attempt_at=?, created_at=?, last_error=NULL"
                            " WHERE job_id=? AND state=?", (PENDING, time.time(), time.time(), job_id, DEAD))
            return cur.rowcount

    def retry_job(self, job_id: int) -> Job:
        """Put a failed (or done) job back in the queue; raises KeyError/ValueError with the reason.
        (A done job with dead deliveries is re-sent instead: see resend_dead.)"""
        with self.transaction() as c:
            row = c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job with id {job_id}")
            if row["state"] in (PENDING, RUNNING):
                raise ValueError(f"job {job_id} is {row['state']}; only failed or done jobs can be retried")
            if row["superseded_by"] is not None:
                raise ValueError(f"job {job_id} was superseded by job {row['superseded_by']}; retry that one")
            c.execute("UPDATE jobs SET state=?, error=NULL, finished_at=NULL WHERE id=?", (PENDING, job_id))
            return Job.from_row(c.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())

    def recover_after_restart(self) -> int:
        """Jobs left running by a crash go back to pending; returns how many."""
        with self.transaction() as c:
            c.execute("UPDATE jobs SET state=?, finished_at=?, error=? WHERE state=? AND superseded_by IS NOT NULL",
                      (SUPERSEDED, time.time(), "interrupted by a node restart after a newer job replaced it", RUNNING))
            cur = c.execute("UPDATE jobs SET state=?, error=? WHERE state=?",
                            (PENDING, "interrupted by a node restart; queued again", RUNNING))
            return cur.rowcount

    def jobs(self, limit: int = 100) -> list[Job]:
        return [Job.from_row(r) for r in self.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]

    def job(self, job_id: int) -> Job | None:
        rows = self.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return Job.from_row(rows[0]) if rows else None
