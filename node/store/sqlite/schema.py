"""The SQLite schema and its migrations (PRAGMA user_version counts the applied ones).

A migration is appended, never edited: an index written by an older node is brought forward at
open. Paths in `instances.path` and `outbox.path` are relative to storage.root.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
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
    # 4: leases (node id, expiry) on claimed jobs and deliveries; at most one live (pending or
    # running, not superseded) job per study, enforced by the database itself
    """
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_expires_at REAL;
    ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
    ALTER TABLE outbox ADD COLUMN lease_expires_at REAL;
    CREATE INDEX outbox_by_study ON outbox(study_uid, state);
    CREATE INDEX studies_by_state ON studies(state);
    CREATE INDEX studies_by_patient ON studies(patient_id);
    UPDATE jobs SET state='superseded', error='a newer live job of the study replaced it (schema 4)'
        WHERE state IN ('pending', 'running') AND superseded_by IS NULL AND id NOT IN (
            SELECT MAX(id) FROM jobs WHERE state IN ('pending', 'running') AND superseded_by IS NULL
            GROUP BY study_uid);
    CREATE UNIQUE INDEX one_live_job_per_study ON jobs(study_uid)
        WHERE superseded_by IS NULL AND state IN ('pending', 'running');
    """,
)


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
