"""Watch the index for studies that became complete and queue exactly one job for each."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from node.audit import AuditLog
from node.completion import SeriesSnapshot, StudySnapshot, assess_study
from node.index import NO_PET, RECEIVING, Index
from node.periodic import Periodic

log = logging.getLogger(__name__)


def study_snapshot(index: Index, study_uid: str) -> StudySnapshot | None:
    rows = index.query("SELECT first_received, last_received FROM studies WHERE study_uid=?", (study_uid,))
    if not rows:
        return None
    series = index.query(
        "SELECT s.series_uid, s.modality, s.frame_of_reference_uid, s.instance_count, s.last_received,"
        " s.number_of_slices, s.series_description, COUNT(DISTINCT i.image_index) AS d,"
        " MIN(i.image_index) AS mn, MAX(i.image_index) AS mx"
        " FROM series s LEFT JOIN instances i ON i.series_uid = s.series_uid"
        " WHERE s.study_uid=? GROUP BY s.series_uid", (study_uid,))
    return StudySnapshot(
        study_uid, rows[0]["first_received"], rows[0]["last_received"],
        tuple(SeriesSnapshot(r["series_uid"], r["modality"] or "", r["frame_of_reference_uid"] or "",
                             r["instance_count"], r["last_received"], r["number_of_slices"], r["d"], r["mn"],
                             r["mx"], r["series_description"] or "") for r in series),
    )


class CompletionMonitor:
    def __init__(self, index: Index, stable_after_s: float, force_after_s: float, poll_s: float) -> None:
        self.index = index
        self.stable_after_s = stable_after_s
        self.force_after_s = force_after_s
        self._periodic = Periodic("completion", self.check_once, poll_s)
        self.audit: AuditLog | None = None
        # Asked before a complete study's job is queued (the retrieve stage: priors first); False = later.
        self.gate: Callable[[str, float], bool] | None = None

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

    def check_once(self, now: float | None = None) -> list[int]:
        """Assess every receiving study; returns the ids of jobs queued."""
        queued = []
        for row in self.index.query("SELECT study_uid FROM studies WHERE state=?", (RECEIVING,)):
            snap = study_snapshot(self.index, row["study_uid"])
            if snap is None:
                continue
            verdict = assess_study(snap, time.time() if now is None else now, self.stable_after_s,
                                   self.force_after_s)
            if verdict.no_pet:
                if self.index.set_study_state(snap.study_uid, NO_PET, verdict.reason, snap.last_received):
                    log.info("study %s: %s", snap.study_uid, verdict.reason)
                continue
            if not verdict.ready:
                continue
            if self.gate is not None and not self.gate(snap.study_uid, snap.last_received):
                continue
            n_instances = sum(s.instance_count for s in snap.series)
            payload = {"pet_series": list(verdict.pet_series), "ct_series": verdict.ct_series,
                       "reason": verdict.reason}
            job_id = self.index.queue_job("quantify", snap.study_uid, payload, list(verdict.warnings),
                                          snap.last_received)
            if job_id is None:
                continue  # new instances arrived meanwhile: assess again next round
            for w in verdict.warnings:
                log.warning("study %s: %s", snap.study_uid, w)
            log.info("study %s ready (%s): %d instances in %d series; job %d queued", snap.study_uid,
                     verdict.reason, n_instances, len(snap.series), job_id)
            if self.audit:
                self.audit.event("instances-stored", study_instance_uid=snap.study_uid, instances=n_instances,
                                 series=len(snap.series), job=job_id)
            queued.append(job_id)
        return queued
