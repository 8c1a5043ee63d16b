"""Studies, series and instances in SQLite (node.store.base.StudyStore)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from node.completion import StudySnapshot
from node.store import rows
from node.store.records import InstanceLocation, InstanceRecord, StudyBeingDeleted, StudyInfo
from node.store.sqlite.db import Db
from node.store.states import DeliveryState, JobState, StudyState


def busy(c: sqlite3.Connection, study_uid: str) -> bool:
    """A pending or running job, or an undelivered result: keep everything of the study."""
    if c.execute("SELECT 1 FROM jobs WHERE study_uid=? AND state IN (?,?)",
                 (study_uid, JobState.PENDING, JobState.RUNNING)).fetchone():
        return True
    return bool(c.execute("SELECT 1 FROM outbox WHERE study_uid=? AND state=?",
                          (study_uid, DeliveryState.PENDING)).fetchone())


class SqliteStudies:
    def __init__(self, db: Db) -> None:
        self._db = db

    def add_instance(self, rec: InstanceRecord, source: str, calling_ae: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._db.write() as c:
            if c.execute("SELECT 1 FROM instances WHERE sop_instance_uid=?", (rec.sop_instance_uid,)).fetchone():
                return False
            study = c.execute("SELECT state FROM studies WHERE study_uid=?", (rec.study_uid,)).fetchone()
            if study is not None and study["state"] == StudyState.DELETING:
                raise StudyBeingDeleted(rec.study_uid)
            if study is None:
                c.execute(
                    "INSERT INTO studies (study_uid, patient_id, issuer_of_patient_id, patient_name,"
                    " patient_birth_date, patient_sex, accession_number, study_date, study_time, study_description,"
                    " specific_character_set, state, first_received, last_received)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (rec.study_uid, rec.patient_id, rec.issuer_of_patient_id, rec.patient_name,
                     rec.patient_birth_date, rec.patient_sex, rec.accession_number, rec.study_date,
                     rec.study_time, rec.study_description, rec.specific_character_set, StudyState.RECEIVING,
                     now, now),
                )
            elif study["state"] != StudyState.RECEIVING:
                c.execute("UPDATE studies SET state=?, note=? WHERE study_uid=?",
                          (StudyState.RECEIVING, "re-opened by new instances", rec.study_uid))
                c.execute("UPDATE jobs SET state=?, finished_at=?, error=? WHERE study_uid=? AND state=?",
                          (JobState.SUPERSEDED, now, "new instances arrived before it ran", rec.study_uid,
                           JobState.PENDING))
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

    def has_instance(self, sop_instance_uid: str) -> bool:
        return self._db.row("SELECT 1 FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)) is not None

    def instance_location(self, sop_instance_uid: str) -> InstanceLocation | None:
        r = self._db.row("SELECT study_uid, series_uid, path FROM instances WHERE sop_instance_uid=?",
                         (sop_instance_uid,))
        return None if r is None else InstanceLocation(sop_instance_uid, r["study_uid"], r["series_uid"], r["path"])

    def instance_paths(self) -> set[str]:
        return {r[0] for r in self._db.rows("SELECT path FROM instances")}

    def study_instance_paths(self, study_uid: str) -> list[str]:
        return [r[0] for r in self._db.rows("SELECT path FROM instances WHERE study_uid=? ORDER BY path",
                                            (study_uid,))]

    def series_paths(self, series_uid: str) -> list[str]:
        return [r[0] for r in self._db.rows(
            "SELECT path FROM instances WHERE series_uid=? ORDER BY image_index, instance_number, path", (series_uid,))]

    def study_series(self, study_uid: str) -> list[str]:
        return [r[0] for r in self._db.rows("SELECT series_uid FROM series WHERE study_uid=? ORDER BY series_uid",
                                            (study_uid,))]

    def has_study(self, study_uid: str) -> bool:
        return self._db.row("SELECT 1 FROM studies WHERE study_uid=?", (study_uid,)) is not None

    def study_state(self, study_uid: str) -> StudyState | None:
        r = self._db.row("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
        return None if r is None else StudyState(r["state"])

    def study_info(self, study_uid: str) -> StudyInfo | None:
        r = self._db.row("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        return None if r is None else rows.study_info(r)

    def studies_in_state(self, state: StudyState) -> list[str]:
        return [r[0] for r in self._db.rows("SELECT study_uid FROM studies WHERE state=? ORDER BY first_received",
                                            (state,))]

    def studies_received_before(self, cutoff: float) -> list[str]:
        return [r[0] for r in self._db.rows(
            "SELECT study_uid FROM studies WHERE last_received < ? AND state<>? ORDER BY last_received",
            (cutoff, StudyState.DELETED))]

    def studies_of_patient(self, patient_id: str, issuer_of_patient_id: str, exclude_study_uid: str) -> list[str]:
        return [r[0] for r in self._db.rows(
            "SELECT study_uid FROM studies WHERE patient_id=? AND COALESCE(issuer_of_patient_id,'')=?"
            " AND study_uid<>? ORDER BY study_uid", (patient_id, issuer_of_patient_id or "", exclude_study_uid))]

    def study_snapshot(self, study_uid: str) -> StudySnapshot | None:
        with self._db.read() as c:
            study = c.execute("SELECT first_received, last_received FROM studies WHERE study_uid=?",
                              (study_uid,)).fetchone()
            if study is None:
                return None
            series = c.execute(rows.SNAPSHOT_SERIES_SQL.format(p="?"), (study_uid,)).fetchall()
        return rows.study_snapshot(study_uid, study, series)

    def set_study_state(self, study_uid: str, state: StudyState, note: str | None,
                        expect_last_received: float | None = None) -> bool:
        with self._db.write() as c:
            if expect_last_received is not None:
                row = c.execute("SELECT last_received FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
                if row is None or row["last_received"] != expect_last_received:
                    return False
            return c.execute("UPDATE studies SET state=?, note=? WHERE study_uid=?",
                             (state, note, study_uid)).rowcount == 1

    def is_busy(self, study_uid: str) -> bool:
        with self._db.read() as c:
            return busy(c, study_uid)

    def claim_for_deletion(self, study_uid: str, cutoff: float, note: str) -> list[str] | None:
        with self._db.write(durable=True) as c:
            row = c.execute("SELECT last_received, state FROM studies WHERE study_uid=?", (study_uid,)).fetchone()
            if row is None or row["last_received"] >= cutoff or row["state"] == StudyState.DELETED:
                return None
            if busy(c, study_uid):
                return None
            c.execute("UPDATE studies SET state=?, note=? WHERE study_uid=?", (StudyState.DELETING, note, study_uid))
            return [r["path"] for r in c.execute("SELECT path FROM instances WHERE study_uid=? ORDER BY path",
                                                 (study_uid,))]

    def drop_study_inputs(self, study_uid: str, note: str) -> None:
        with self._db.write(durable=True) as c:
            c.execute("DELETE FROM instances WHERE study_uid=?", (study_uid,))
            c.execute("DELETE FROM series WHERE study_uid=?", (study_uid,))
            c.execute("UPDATE studies SET state=?, instance_count=0, note=? WHERE study_uid=?",
                      (StudyState.DELETED, note, study_uid))

    def delete_results_if_idle(self, study_uid: str, delete: Callable[[], None]) -> bool:
        # The write lock is held while `delete` runs: no job of this node publishes meanwhile
        # (publication takes the same lock, node.store.sqlite.jobs).
        with self._db.write() as c:
            if busy(c, study_uid):
                return False
            delete()
            return True
