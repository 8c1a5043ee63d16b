"""Studies, series and instances in PostgreSQL (node.store.base.StudyStore).

Instances of one study may arrive at several nodes at once: add_instance locks the study's row
(FOR UPDATE) for its short transaction, so counts, re-opening and supersession stay exact, while
different studies never wait for each other. Publication and retention of a study's results hold
the study's advisory lock (study_lock), which add_instance does not need.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from node.completion import StudySnapshot
from node.store import rows
from node.store.postgres.db import Db
from node.store.postgres.schema import LOCK_CLASS_STUDY
from node.store.records import InstanceLocation, InstanceRecord, StudyBeingDeleted, StudyInfo
from node.store.states import DeliveryState, JobState, StudyState


class _Indexed(Exception):
    """The instance is indexed already: add_instance rolls back and answers False."""


def study_lock(c: Any, study_uid: str) -> None:
    """Hold off every other publication or result deletion of the study until this transaction ends."""
    c.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS_STUDY, study_uid))


def busy(c: Any, study_uid: str) -> bool:
    """A pending or running job, or an undelivered result: keep everything of the study."""
    if c.execute("SELECT 1 FROM jobs WHERE study_uid=%s AND state IN (%s,%s) LIMIT 1",
                 (study_uid, JobState.PENDING, JobState.RUNNING)).fetchone():
        return True
    return c.execute("SELECT 1 FROM outbox WHERE study_uid=%s AND state=%s LIMIT 1",
                     (study_uid, DeliveryState.PENDING)).fetchone() is not None


class PgStudies:
    def __init__(self, db: Db) -> None:
        self._db = db

    def add_instance(self, rec: InstanceRecord, source: str, calling_ae: str, now: float | None = None) -> bool:
        # Ingest's hot path: three round trips (pipeline mode) plus the commit's WAL flush.
        now = time.time() if now is None else now
        try:
            with self._db.write(pipeline=True) as c:
                c.execute(
                    "INSERT INTO studies (study_uid, patient_id, issuer_of_patient_id, patient_name,"
                    " patient_birth_date, patient_sex, accession_number, study_date, study_time, study_description,"
                    " specific_character_set, state, first_received, last_received)"
                    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (study_uid) DO NOTHING",
                    (rec.study_uid, rec.patient_id, rec.issuer_of_patient_id, rec.patient_name,
                     rec.patient_birth_date, rec.patient_sex, rec.accession_number, rec.study_date, rec.study_time,
                     rec.study_description, rec.specific_character_set, StudyState.RECEIVING, now, now))
                study = c.execute("SELECT state, EXISTS (SELECT 1 FROM instances WHERE sop_instance_uid=%s) AS dup"
                                  " FROM studies WHERE study_uid=%s FOR UPDATE",
                                  (rec.sop_instance_uid, rec.study_uid)).fetchone()
                if study["dup"]:
                    raise _Indexed  # rolled back: not even an empty study row stays
                if study["state"] == StudyState.DELETING:
                    raise StudyBeingDeleted(rec.study_uid)
                if study["state"] != StudyState.RECEIVING:
                    c.execute("UPDATE studies SET state=%s, note=%s WHERE study_uid=%s",
                              (StudyState.RECEIVING, "re-opened by new instances", rec.study_uid))
                    c.execute("UPDATE jobs SET state=%s, finished_at=%s, error=%s WHERE study_uid=%s AND state=%s",
                              (JobState.SUPERSEDED, now, "new instances arrived before it ran", rec.study_uid,
                               JobState.PENDING))
                c.execute(
                    "INSERT INTO series (series_uid, study_uid, modality, sop_class_uid, series_number,"
                    " series_description, frame_of_reference_uid, number_of_slices, image_type, corrected_image,"
                    " units, first_received, last_received) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " ON CONFLICT (series_uid) DO NOTHING",
                    (rec.series_uid, rec.study_uid, rec.modality, rec.sop_class_uid, rec.series_number,
                     rec.series_description, rec.frame_of_reference_uid, rec.number_of_slices, rec.image_type,
                     rec.corrected_image, rec.units, now, now))
                # The counts move only if the row went in (another node may have indexed it meanwhile).
                inserted = c.execute(
                    "WITH ins AS (INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid,"
                    " transfer_syntax_uid, instance_number, image_index, path, size_bytes, received_at, source,"
                    " calling_ae) VALUES (%(sop)s,%(series)s,%(study)s,%(cls)s,%(ts)s,%(num)s,%(idx)s,%(path)s,"
                    "%(size)s,%(now)s,%(source)s,%(ae)s) ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING 1),"
                    " s AS (UPDATE series SET instance_count=instance_count+1, last_received=%(now)s"
                    " WHERE series_uid=%(series)s AND EXISTS (SELECT 1 FROM ins) RETURNING 1),"
                    " t AS (UPDATE studies SET instance_count=instance_count+1, last_received=%(now)s"
                    " WHERE study_uid=%(study)s AND EXISTS (SELECT 1 FROM ins) RETURNING 1)"
                    " SELECT (SELECT count(*) FROM ins) AS n",
                    {"sop": rec.sop_instance_uid, "series": rec.series_uid, "study": rec.study_uid,
                     "cls": rec.sop_class_uid, "ts": rec.transfer_syntax_uid, "num": rec.instance_number,
                     "idx": rec.image_index, "path": rec.path, "size": rec.size_bytes, "now": now, "source": source,
                     "ae": calling_ae}).fetchone()
                if not inserted["n"]:
                    raise _Indexed
        except _Indexed:
            return False
        return True

    def has_instance(self, sop_instance_uid: str) -> bool:
        return self._db.row("SELECT 1 FROM instances WHERE sop_instance_uid=%s", (sop_instance_uid,)) is not None

    def instance_location(self, sop_instance_uid: str) -> InstanceLocation | None:
        r = self._db.row("SELECT study_uid, series_uid, path FROM instances WHERE sop_instance_uid=%s",
                         (sop_instance_uid,))
        return None if r is None else InstanceLocation(sop_instance_uid, r["study_uid"], r["series_uid"], r["path"])

    def instance_paths(self) -> set[str]:
        return {r["path"] for r in self._db.rows("SELECT path FROM instances")}

    def study_instance_paths(self, study_uid: str) -> list[str]:
        return [r["path"] for r in self._db.rows("SELECT path FROM instances WHERE study_uid=%s ORDER BY path",
                                                 (study_uid,))]

    def series_paths(self, series_uid: str) -> list[str]:
        # NULLS FIRST: SQLite's order of NULL, so both backends list a series alike
        return [r["path"] for r in self._db.rows(
            "SELECT path FROM instances WHERE series_uid=%s"
            " ORDER BY image_index NULLS FIRST, instance_number NULLS FIRST, path", (series_uid,))]

    def study_series(self, study_uid: str) -> list[str]:
        return [r["series_uid"] for r in self._db.rows(
            "SELECT series_uid FROM series WHERE study_uid=%s ORDER BY series_uid", (study_uid,))]

    def has_study(self, study_uid: str) -> bool:
        return self._db.row("SELECT 1 FROM studies WHERE study_uid=%s", (study_uid,)) is not None

    def study_state(self, study_uid: str) -> StudyState | None:
        r = self._db.row("SELECT state FROM studies WHERE study_uid=%s", (study_uid,))
        return None if r is None else StudyState(r["state"])

    def study_info(self, study_uid: str) -> StudyInfo | None:
        r = self._db.row("SELECT * FROM studies WHERE study_uid=%s", (study_uid,))
        return None if r is None else rows.study_info(r)

    def studies_in_state(self, state: StudyState) -> list[str]:
        return [r["study_uid"] for r in self._db.rows(
            "SELECT study_uid FROM studies WHERE state=%s ORDER BY first_received", (state,))]

    def studies_received_before(self, cutoff: float) -> list[str]:
        return [r["study_uid"] for r in self._db.rows(
            "SELECT study_uid FROM studies WHERE last_received < %s AND state<>%s ORDER BY last_received",
            (cutoff, StudyState.DELETED))]

    def studies_of_patient(self, patient_id: str, issuer_of_patient_id: str, exclude_study_uid: str) -> list[str]:
        return [r["study_uid"] for r in self._db.rows(
            "SELECT study_uid FROM studies WHERE patient_id=%s AND COALESCE(issuer_of_patient_id,'')=%s"
            " AND study_uid<>%s ORDER BY study_uid", (patient_id, issuer_of_patient_id or "", exclude_study_uid))]

    def study_snapshot(self, study_uid: str) -> StudySnapshot | None:
        with self._db.snapshot() as c:
            study = c.execute("SELECT first_received, last_received FROM studies WHERE study_uid=%s",
                              (study_uid,)).fetchone()
            if study is None:
                return None
            series = c.execute(rows.SNAPSHOT_SERIES_SQL.format(p="%s"), (study_uid,)).fetchall()
        return rows.study_snapshot(study_uid, study, series)

    def set_study_state(self, study_uid: str, state: StudyState, note: str | None,
                        expect_last_received: float | None = None) -> bool:
        with self._db.write() as c:
            if expect_last_received is not None:
                row = c.execute("SELECT last_received FROM studies WHERE study_uid=%s FOR UPDATE",
                                (study_uid,)).fetchone()
                if row is None or row["last_received"] != expect_last_received:
                    return False
            return c.execute("UPDATE studies SET state=%s, note=%s WHERE study_uid=%s",
                             (state, note, study_uid)).rowcount == 1

    def is_busy(self, study_uid: str) -> bool:
        with self._db.snapshot() as c:
            return busy(c, study_uid)

    def claim_for_deletion(self, study_uid: str, cutoff: float, note: str) -> list[str] | None:
        with self._db.write() as c:  # durable: PostgreSQL's commit is (synchronous_commit=on)
            row = c.execute("SELECT last_received, state FROM studies WHERE study_uid=%s FOR UPDATE",
                            (study_uid,)).fetchone()
            if row is None or row["last_received"] >= cutoff or row["state"] == StudyState.DELETED:
                return None
            if busy(c, study_uid):
                return None
            c.execute("UPDATE studies SET state=%s, note=%s WHERE study_uid=%s", (StudyState.DELETING, note, study_uid))
            return [r["path"] for r in c.execute("SELECT path FROM instances WHERE study_uid=%s ORDER BY path",
                                                 (study_uid,)).fetchall()]

    def drop_study_inputs(self, study_uid: str, note: str) -> None:
        with self._db.write() as c:
            c.execute("DELETE FROM instances WHERE study_uid=%s", (study_uid,))
            c.execute("DELETE FROM series WHERE study_uid=%s", (study_uid,))
            c.execute("UPDATE studies SET state=%s, instance_count=0, note=%s WHERE study_uid=%s",
                      (StudyState.DELETED, note, study_uid))

    def delete_results_if_idle(self, study_uid: str, delete: Callable[[], None]) -> bool:
        # The study's advisory lock is held while `delete` runs: no node publishes its results meanwhile
        # (publication takes the same lock, node.store.postgres.jobs).
        with self._db.write() as c:
            study_lock(c, study_uid)
            if busy(c, study_uid):
                return False
            delete()
            return True
