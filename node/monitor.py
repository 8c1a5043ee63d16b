"""Watch the index for studies that became complete and queue exactly one job for each.

Safe to run on every node of a shared index at once: `jobs.queue` queues only for a study still as
assessed (same last_received, still receiving), so of several monitors one wins, the others get None."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from node.audit import AuditLog
from node.completion import assess_study
from node.periodic import Periodic
from node.store import Store, StudyState

log = logging.getLogger(__name__)


class CompletionMonitor:
    def __init__(self, store: Store, stable_after_s: float, force_after_s: float, poll_s: float) -> None:
        self.store = store
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
        for study_uid in self.store.studies.studies_in_state(StudyState.RECEIVING):
            snap = self.store.studies.study_snapshot(study_uid)
            if snap is None:
                continue
            verdict = assess_study(snap, time.time() if now is None else now, self.stable_after_s,
                                   self.force_after_s)
            if verdict.no_pet:
                if self.store.studies.set_study_state(snap.study_uid, StudyState.NO_PET, verdict.reason,
                                                      snap.last_received):
                    log.info("study %s: %s", snap.study_uid, verdict.reason)
                continue
            if not verdict.ready:
                continue
            if self.gate is not None and not self.gate(snap.study_uid, snap.last_received):
                continue
            n_instances = sum(s.instance_count for s in snap.series)
            payload = {"pet_series": list(verdict.pet_series), "ct_series": verdict.ct_series,
                       "reason": verdict.reason}
            job_id = self.store.jobs.queue("quantify", snap.study_uid, payload, list(verdict.warnings),
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
