"""Studies, series and instances (node.store.base.StudyStore) in SQL both backends run.

add_instance, ingest's hot path, is each backend's own (node.store.sqlite.studies,
node.store.postgres.studies): SQLite's single writer checks then inserts, PostgreSQL pipelines a
locked upsert so instances of one study may arrive at several nodes at once. Reads and the
retention steps are written once here; a read-check-write locks the study's row (the dialect's
FOR UPDATE) and publication or result deletion holds the study's lock (Dialect.lock_study).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from node.completion import StudySnapshot
from node.store import rows
from node.store.records import InstanceLocation, InstanceRecord, StudyInfo
from node.store.sql.dialect import SqlPart
from node.store.states import DeliveryState, JobState, StudyState

# add_instance's first rows of a study and of a series (another instance may have written them first).
INSERT_STUDY = (
    "INSERT INTO studies (study_uid, patient_id, issuer_of_patient_id, patient_name, patient_birth_date,"
    " patient_sex, accession_number, study_date, study_time, study_description, specific_character_set, state,"
    " first_received, last_received) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (study_uid) DO NOTHING")
INSERT_SERIES = (
    "INSERT INTO series (series_uid, study_uid, modality, sop_class_uid, series_number, series_description,"
    " frame_of_reference_uid, number_of_slices, image_type, corrected_image, units, first_received,"
    " last_received) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (series_uid) DO NOTHING")


def study_params(rec: InstanceRecord, now: float) -> tuple[Any, ...]:
    return (rec.study_uid, rec.patient_id, rec.issuer_of_patient_id, rec.patient_name, rec.patient_birth_date,
            rec.patient_sex, rec.accession_number, rec.study_date, rec.study_time, rec.study_description,
            rec.specific_character_set, StudyState.RECEIVING, now, now)


def series_params(rec: InstanceRecord, now: float) -> tuple[Any, ...]:
    return (rec.series_uid, rec.study_uid, rec.modality, rec.sop_class_uid, rec.series_number,
            rec.series_description, rec.frame_of_reference_uid, rec.number_of_slices, rec.image_type,
            rec.corrected_image, rec.units, now, now)


class SqlStudies(SqlPart):
    def _busy(self, c: Any, study_uid: str) -> bool:
        """A pending or running job, or an undelivered result: keep everything of the study."""
        if self._x(c, "SELECT 1 FROM jobs WHERE study_uid=? AND state IN (?,?) LIMIT 1",
                   (study_uid, JobState.PENDING, JobState.RUNNING)).fetchone():
            return True
        return self._x(c, "SELECT 1 FROM outbox WHERE study_uid=? AND state=? LIMIT 1",
                       (study_uid, DeliveryState.PENDING)).fetchone() is not None

    def _reopen(self, c: Any, study_uid: str, now: float) -> None:
        """New instances of a study past receiving: receiving again, and its pending job is void."""
        self._x(c, "UPDATE studies SET state=?, note=? WHERE study_uid=?",
                (StudyState.RECEIVING, "re-opened by new instances", study_uid))
        self._x(c, "UPDATE jobs SET state=?, finished_at=?, error=? WHERE study_uid=? AND state=?",
                (JobState.SUPERSEDED, now, "new instances arrived before it ran", study_uid, JobState.PENDING))

    def has_instance(self, sop_instance_uid: str) -> bool:
        return self._db.row("SELECT 1 FROM instances WHERE sop_instance_uid=?", (sop_instance_uid,)) is not None

    def instance_location(self, sop_instance_uid: str) -> InstanceLocation | None:
        r = self._db.row("SELECT study_uid, series_uid, path FROM instances WHERE sop_instance_uid=?",
                         (sop_instance_uid,))
        return None if r is None else InstanceLocation(sop_instance_uid, r["study_uid"], r["series_uid"], r["path"])

    def instance_paths(self) -> set[str]:
        return {r["path"] for r in self._db.rows("SELECT path FROM instances")}

    def study_instance_paths(self, study_uid: str) -> list[str]:
        return [r["path"] for r in self._db.rows("SELECT path FROM instances WHERE study_uid=? ORDER BY path",
                                                 (study_uid,))]

    def series_paths(self, series_uid: str) -> list[str]:
        # NULLS FIRST: SQLite's default order of NULL, written out so PostgreSQL lists a series alike
        return [r["path"] for r in self._db.rows(
            "SELECT path FROM instances WHERE series_uid=?"
            " ORDER BY image_index NULLS FIRST, instance_number NULLS FIRST, path", (series_uid,))]

    def study_series(self, study_uid: str) -> list[str]:
        return [r["series_uid"] for r in self._db.rows(
            "SELECT series_uid FROM series WHERE study_uid=? ORDER BY series_uid", (study_uid,))]

    def has_study(self, study_uid: str) -> bool:
        return self._db.row("SELECT 1 FROM studies WHERE study_uid=?", (study_uid,)) is not None

    def study_state(self, study_uid: str) -> StudyState | None:
        r = self._db.row("SELECT state FROM studies WHERE study_uid=?", (study_uid,))
        return None if r is None else StudyState(r["state"])

    def study_info(self, study_uid: str) -> StudyInfo | None:
        r = self._db.row("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        return None if r is None else rows.study_info(r)

    def studies_in_state(self, state: StudyState) -> list[str]:
        return [r["study_uid"] for r in self._db.rows(
            "SELECT study_uid FROM studies WHERE state=? ORDER BY first_received", (state,))]

    def studies_received_before(self, cutoff: float) -> list[str]:
        return [r["study_uid"] for r in self._db.rows(
            "SELECT study_uid FROM studies WHERE last_received < ? AND state<>? ORDER BY last_received",
            (cutoff, StudyState.DELETED))]

    def studies_of_patient(self, patient_id: str, issuer_of_patient_id: str, exclude_study_uid: str) -> list[str]:
        return [r["study_uid"] for r in self._db.rows(
            "SELECT study_uid FROM studies WHERE patient_id=? AND COALESCE(issuer_of_patient_id,'')=?"
            " AND study_uid<>? ORDER BY study_uid", (patient_id, issuer_of_patient_id or "", exclude_study_uid))]

    def study_snapshot(self, study_uid: str) -> StudySnapshot | None:
        with self._db.read() as c:
            study = self._x(c, "SELECT first_received, last_received FROM studies WHERE study_uid=?",
                            (study_uid,)).fetchone()
            if study is None:
                return None
            series = self._x(c, rows.SNAPSHOT_SERIES_SQL.format(p="?"), (study_uid,)).fetchall()
        return rows.study_snapshot(study_uid, study, series)

    def set_study_state(self, study_uid: str, state: StudyState, note: str | None,
                        expect_last_received: float | None = None) -> bool:
        with self._db.write() as c:
            if expect_last_received is not None:
                row = self._x(c, f"SELECT last_received FROM studies WHERE study_uid=?{self._d.for_update}",
                              (study_uid,)).fetchone()
                if row is None or row["last_received"] != expect_last_received:
                    return False
            return self._x(c, "UPDATE studies SET state=?, note=? WHERE study_uid=?",
                           (state, note, study_uid)).rowcount == 1

    def is_busy(self, study_uid: str) -> bool:
        with self._db.read() as c:
            return self._busy(c, study_uid)

    def claim_for_deletion(self, study_uid: str, cutoff: float, note: str) -> list[str] | None:
        with self._db.write(durable=True) as c:  # files are deleted after it: the commit is fsynced
            row = self._x(c, f"SELECT last_received, state FROM studies WHERE study_uid=?{self._d.for_update}",
                          (study_uid,)).fetchone()
            if row is None or row["last_received"] >= cutoff or row["state"] == StudyState.DELETED:
                return None
            if self._busy(c, study_uid):
                return None
            self._x(c, "UPDATE studies SET state=?, note=? WHERE study_uid=?", (StudyState.DELETING, note, study_uid))
            return [r["path"] for r in self._x(c, "SELECT path FROM instances WHERE study_uid=? ORDER BY path",
                                               (study_uid,)).fetchall()]

    def drop_study_inputs(self, study_uid: str, note: str) -> None:
        with self._db.write(durable=True) as c:
            self._x(c, "DELETE FROM instances WHERE study_uid=?", (study_uid,))
            self._x(c, "DELETE FROM series WHERE study_uid=?", (study_uid,))
            self._x(c, "UPDATE studies SET state=?, instance_count=0, note=? WHERE study_uid=?",
                    (StudyState.DELETED, note, study_uid))

    def delete_results_if_idle(self, study_uid: str, delete: Callable[[], None]) -> bool:
        # The study's lock is held while `delete` runs: no job publishes its results meanwhile
        # (publication takes the same lock, node.store.sql.jobs).
        with self._db.write() as c:
            self._d.lock_study(c, study_uid)
            if self._busy(c, study_uid):
                return False
            delete()
            return True
