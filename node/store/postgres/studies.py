"""Studies, series and instances in PostgreSQL: add_instance, its own; the rest is node.store.sql.studies.

Instances of one study may arrive at several nodes at once: add_instance locks the study's row
(FOR UPDATE) for its short transaction, so counts, re-opening and supersession stay exact, while
different studies never wait for each other. It is ingest's hot path, written for libpq's pipeline
mode (three round trips plus the commit's WAL flush), hence not in the shared SQL.
"""

from __future__ import annotations

import time

from node.store.records import InstanceRecord, StudyBeingDeleted
from node.store.sql.studies import INSERT_SERIES, INSERT_STUDY, SqlStudies, series_params, study_params
from node.store.states import StudyState


class _Indexed(Exception):
    """The instance is indexed already: add_instance rolls back and answers False."""


class PgStudies(SqlStudies):
    def add_instance(self, rec: InstanceRecord, source: str, calling_ae: str, now: float | None = None) -> bool:
        # Ingest's hot path: three round trips (pipeline mode) plus the commit's WAL flush.
        now = time.time() if now is None else now
        try:
            with self._db.write(pipeline=True) as c:
                self._x(c, INSERT_STUDY, study_params(rec, now))
                study = c.execute("SELECT state, EXISTS (SELECT 1 FROM instances WHERE sop_instance_uid=%s) AS dup"
                                  " FROM studies WHERE study_uid=%s FOR UPDATE",
                                  (rec.sop_instance_uid, rec.study_uid)).fetchone()
                if study["dup"]:
                    raise _Indexed  # rolled back: not even an empty study row stays
                if study["state"] == StudyState.DELETING:
                    raise StudyBeingDeleted(rec.study_uid)
                if study["state"] != StudyState.RECEIVING:
                    self._reopen(c, rec.study_uid, now)
                self._x(c, INSERT_SERIES, series_params(rec, now))
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
