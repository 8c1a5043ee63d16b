"""Studies, series and instances in SQLite: add_instance, SQLite's own; the rest is node.store.sql.studies.

SQLite's one writer (BEGIN IMMEDIATE) makes check-then-insert exact: nothing else writes meanwhile.
"""

from __future__ import annotations

import time

from node.store.records import InstanceRecord, StudyBeingDeleted
from node.store.sql.studies import INSERT_SERIES, INSERT_STUDY, SqlStudies, series_params, study_params
from node.store.states import StudyState


class SqliteStudies(SqlStudies):
    def add_instance(self, rec: InstanceRecord, source: str, calling_ae: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._db.write() as c:
            if c.execute("SELECT 1 FROM instances WHERE sop_instance_uid=?", (rec.sop_instance_uid,)).fetchone():
                return False
            study = c.execute("SELECT state FROM studies WHERE study_uid=?", (rec.study_uid,)).fetchone()
            if study is not None and study["state"] == StudyState.DELETING:
                raise StudyBeingDeleted(rec.study_uid)
            if study is None:
                c.execute(INSERT_STUDY, study_params(rec, now))
            elif study["state"] != StudyState.RECEIVING:
                self._reopen(c, rec.study_uid, now)
            c.execute(INSERT_SERIES, series_params(rec, now))
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
