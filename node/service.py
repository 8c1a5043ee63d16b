"""`iodine-node serve`: wire the stages together and keep them running until told to stop."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from node import results_store
from node.audit import AuditLog
from node.config import NodeConfig
from node.export.sender import Sender
from node.ingest.ingestor import Ingestor
from node.ingest.listener import Listener
from node.ingest.pool import ListenerPool
from node.ingest.spool import Spool
from node.ingest.watch import WatchFolder
from node.jobs import JobRunner
from node.metrics import Metrics, clean_multiprocess_dir
from node.monitor import CompletionMonitor
from node.periodic import Periodic
from node.retention import apply_retention, finish_interrupted_deletions
from node.retrieve import RetrieveStage
from node.status_http import StatusServer
from node.store import DeliveryState, open_store

log = logging.getLogger(__name__)

SHARED_LEFTOVER_AGE_S = 86400.0  # partial files / staging folders on a shared root older than this are abandoned


class NodeService:
    config_source: str = "built-in defaults"

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.root = Path(config.storage.root).resolve()
        self.spool = Spool(self.root)
        self.store = open_store(config)
        # Several listener processes (node.ingest.pool) count in prometheus-client multiprocess files
        # under the storage root, emptied here so a restart starts from zero as a single process does.
        listeners = config.node.listener_processes or os.cpu_count() or 1
        metrics_dir = clean_multiprocess_dir(self.root / "run" / "metrics") if listeners > 1 else None
        self.metrics = Metrics(metrics_dir)
        audit_path = config.logging.audit_file
        self.audit = AuditLog(audit_path if audit_path.is_absolute() else self.root / audit_path,
                              config.logging.audit_max_mb, config.logging.audit_keep)
        self.ingestor = Ingestor(self.spool, self.store, int(config.ingest.max_instance_mb * 1e6),
                                 config.storage.min_free_gb, self.metrics)
        self.listener: Listener | ListenerPool = (
            ListenerPool(config, listeners, self.root, metrics_dir, self.audit) if metrics_dir is not None
            else Listener(config, self.ingestor, self.spool.tmp, self.metrics, self.audit))
        self.monitor = CompletionMonitor(self.store, config.ingest.stable_after_s, config.ingest.force_after_s,
                                         config.ingest.poll_s)
        self.runner = JobRunner(self.store, self.root, config.processing.workers,
                                config.quantification.settings, config.processing.max_memory_mb,
                                destinations=config.destinations, metrics=self.metrics, comparison=config.comparison,
                                lease_s=config.index.lease_s)
        self.sender = Sender(self.store, self.root, config, self.metrics, self.audit, lease_s=config.index.lease_s)
        # Priors from the PACS are retrieved between completion and the quantify job (node/retrieve.py).
        query = config.comparison.priors.query
        self.retrieve = RetrieveStage(query.for_node(config.node.ae_title) if query else None,
                                      config.comparison.prior_window_days, self.store, self.root, self.spool,
                                      self.ingestor)
        self.monitor.gate = self.retrieve.ready
        self.monitor.audit = self.audit
        retention = config.storage.retention
        self.retention = (Periodic("retention", lambda: apply_retention(self.store, self.root, retention.inputs_days,
                                                                         retention.results_days), 3600.0)
                          if retention.inputs_days or retention.results_days else None)
        self.http = (StatusServer(config.http.bind, config.http.port, self.health, self.metrics.render,
                                  self.jobs_summary, config.http.workers, config.http.request_timeout_s)
                     if config.http.enabled else None)
        self.metrics.gauge("iodine_jobs", "jobs by state", self._jobs_by_state)
        self.metrics.gauge("iodine_outbox_depth", "result objects waiting for delivery", lambda: {
            "": float(self.store.outbox.counts()[DeliveryState.PENDING])})
        self.metrics.gauge("iodine_outbox_dead", "result objects in dead letter", lambda: {
            "": float(self.store.outbox.counts()[DeliveryState.DEAD])})
        self.metrics.gauge("iodine_disk_free_bytes", "free space on the storage root",
                           lambda: {"": float(shutil.disk_usage(self.root).free)})
        self.watch = (WatchFolder(Path(config.ingest.watch_dir), self.spool, self.ingestor,
                                  config.ingest.watch_settle_s) if config.ingest.watch_dir else None)

    def recover(self) -> None:
        """After a crash: drop partial files, give interrupted jobs back to the queue. Stability
        timers need no re-arming: they are computed from the index's receive times."""
        # A shared storage root (several nodes): another node's transfer or job may be writing right now.
        # Its partial files are touched at least every network timeout (120 s) and a job writes its
        # staging folder within minutes; what is older than a day is abandoned.
        age_s = SHARED_LEFTOVER_AGE_S if self.store.shared else 0.0
        removed = self.spool.clear_temp(age_s) + results_store.clear_staging(self.root, age_s)
        requeued = self.store.jobs.recover_after_restart(self.store.node_id)
        self.store.outbox.release_leases(self.store.node_id)
        finished = finish_interrupted_deletions(self.store, self.root)  # before reconcile: nothing comes back
        reindexed = self.ingestor.reconcile()
        if removed or requeued or reindexed or finished:
            log.warning("recovered after restart: %d partial file(s)/folder(s) removed, %d interrupted job(s) queued "
                        "again, %d stored instance(s) re-indexed, %d interrupted retention deletion(s) completed",
                        removed, requeued, reindexed, finished)

    def _jobs_by_state(self) -> dict[str, float]:
        return {f'state="{state}"': float(n) for state, n in self.store.jobs.counts().items()}

    def jobs_summary(self) -> list[dict[str, Any]]:
        """The job list for /jobs: ids, states, errors, deliveries; no patient data."""
        out = []
        for job in self.store.jobs.recent(limit=200):
            deliveries: dict[str, dict[str, int]] = {}
            for row in self.store.outbox.rows(job.id):
                d = deliveries.setdefault(row.destination, {})
                d[row.state] = d.get(row.state, 0) + 1
            out.append({"id": job.id, "kind": job.kind, "study_instance_uid": job.study_uid, "state": job.state,
                        "attempts": job.attempts, "created_at": job.created_at, "started_at": job.started_at,
                        "finished_at": job.finished_at, "error": job.error, "warnings": job.warnings,
                        "superseded_by": job.superseded_by, "deliveries": deliveries})
        return out

    def health(self) -> dict[str, Any]:
        checks: dict[str, dict[str, Any]] = {}
        checks["listener"] = self.listener.status()  # no probe connection: it would take a slot
        try:
            self.store.ping()
            checks["database"] = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = {"ok": False, "error": str(exc)}
        free_gb = shutil.disk_usage(self.root).free / 1e9
        checks["disk"] = {"ok": free_gb >= self.config.storage.min_free_gb, "free_gb": round(free_gb, 2),
                          "min_free_gb": self.config.storage.min_free_gb}
        checks["workers"] = {"ok": self.runner.alive(), "workers": self.config.processing.workers}
        return {"status": "ok" if all(c["ok"] for c in checks.values()) else "unhealthy", "checks": checks}

    def start(self) -> None:
        self.recover()
        self.audit.event("node-started", config=str(self.config_source), storage_root=str(self.root),
                         ae_title=self.config.node.ae_title, port=self.config.node.port)
        self.runner.start()
        self.sender.start()
        self.retrieve.start()
        self.monitor.start()
        if self.watch:
            self.watch.start()
        self.listener.start()
        if self.retention:
            self.retention.start()
        if self.http:
            self.http.start()
            log.info("status endpoint on http://%s:%d (/healthz, /metrics, /jobs)", self.config.http.bind,
                     self.http.port)
        log.info("storage root %s; index %s (node id %s); %d worker(s)", self.root, self.store.location,
                 self.store.node_id, self.config.processing.workers)

    def stop(self) -> None:
        if self.http:
            self.http.stop()
        if self.retention:
            self.retention.stop()
        self.listener.stop()
        if self.watch:
            self.watch.stop()
        self.monitor.stop()
        self.retrieve.stop()
        self.runner.stop()
        self.sender.stop()
        self.audit.event("node-stopped")
        self.audit.close()
        self.store.close()
        log.info("stopped")

    def serve_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.stop()
