"""`iodine-node serve`: wire the stages together and keep them running until told to stop."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from node import results_store
from node.audit import AuditLog
from node.config import NodeConfig
from node.export.sender import Sender
from node.index import Index
from node.ingest.ingestor import Ingestor
from node.ingest.listener import Listener
from node.ingest.spool import Spool
from node.ingest.watch import WatchFolder
from node.jobs import JobRunner
from node.metrics import Metrics
from node.monitor import CompletionMonitor
from node.periodic import Periodic
from node.retention import apply_retention, finish_interrupted_deletions
from node.retrieve import RetrieveStage
from node.status_http import StatusServer

log = logging.getLogger(__name__)


class NodeService:
    config_source: str = "built-in defaults"

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.root = Path(config.storage.root).resolve()
        self.spool = Spool(self.root)
        self.index = Index(self.root)
        self.metrics = Metrics()
        audit_path = config.logging.audit_file
        self.audit = AuditLog(audit_path if audit_path.is_absolute() else self.root / audit_path,
                              config.logging.audit_max_mb, config.logging.audit_keep)
        self.ingestor = Ingestor(self.spool, self.index, int(config.ingest.max_instance_mb * 1e6),
                                 config.storage.min_free_gb, self.metrics)
        self.listener = Listener(config, self.ingestor, self.spool.tmp, self.metrics, self.audit)
        self.monitor = CompletionMonitor(self.index, config.ingest.stable_after_s, config.ingest.force_after_s,
                                         config.ingest.poll_s)
        self.runner = JobRunner(self.index, self.root, config.processing.workers,
                                config.quantification.settings, config.processing.max_memory_mb,
                                destinations=config.destinations, metrics=self.metrics, comparison=config.comparison)
        self.sender = Sender(self.index, self.root, config, self.metrics, self.audit)
        # Priors from the PACS are retrieved between completion and the quantify job (node/retrieve.py).
        query = config.comparison.priors.query
        self.retrieve = RetrieveStage(query.for_node(config.node.ae_title) if query else None,
                                      config.comparison.prior_window_days, self.index, self.root, self.spool,
                                      self.ingestor)
        self.monitor.gate = self.retrieve.ready
        self.monitor.audit = self.audit
        retention = config.storage.retention
        self.retention = (Periodic("retention", lambda: apply_retention(self.index, self.root, retention.inputs_days,
                                                                         retention.results_days), 3600.0)
                          if retention.inputs_days or retention.results_days else None)
        self.http = (StatusServer(config.http.bind, config.http.port, self.health, self.metrics.render,
                                  self.jobs_summary, config.http.workers, config.http.request_timeout_s)
                     if config.http.enabled else None)
        self.metrics.gauge("iodine_jobs", "jobs by state", self._jobs_by_state)
        self.metrics.gauge("iodine_outbox_depth", "result objects waiting for delivery", lambda: {
            "": float(self.index.query("SELECT COUNT(*) FROM outbox WHERE state='pending'")[0][0])})
        self.metrics.gauge("iodine_outbox_dead", "result objects in dead letter", lambda: {
            "": float(self.index.query("SELECT COUNT(*) FROM outbox WHERE state='dead'")[0][0])})
        self.metrics.gauge("iodine_disk_free_bytes", "free space on the storage root",
                           lambda: {"": float(shutil.disk_usage(self.root).free)})
        self.watch = (WatchFolder(Path(config.ingest.watch_dir), self.spool, self.ingestor,
                                  config.ingest.watch_settle_s) if config.ingest.watch_dir else None)

    def recover(self) -> None:
        """After a crash: drop partial files, give interrupted jobs back to the queue. Stability
        timers need no re-arming: they are computed from the index's receive times."""
        removed = self.spool.clear_temp() + results_store.clear_staging(self.root)
        requeued = self.index.recover_after_restart()
        finished = finish_interrupted_deletions(self.index, self.root)  # before reconcile: nothing comes back
        reindexed = self.ingestor.reconcile()
        if removed or requeued or reindexed or finished:
            log.warning("recovered after restart: %d partial file(s)/folder(s) removed, %d interrupted job(s) queued "
                        "again, %d stored instance(s) re-indexed, %d interrupted retention deletion(s) completed",
                        removed, requeued, reindexed, finished)

    def _jobs_by_state(self) -> dict[str, float]:
        rows = self.index.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        counts = {state: 0.0 for state in ("pending", "running", "done", "failed", "superseded")}
        counts.update({r["state"]: float(r["n"]) for r in rows})
        return {f'state="{k}"': v for k, v in counts.items()}

    def jobs_summary(self) -> list[dict[str, Any]]:
        """The job list for /jobs: ids, states, errors, deliveries; no patient data."""
        out = []
        for job in self.index.jobs(limit=200):
            deliveries: dict[str, dict[str, int]] = {}
            for row in self.index.deliveries(job.id):
                d = deliveries.setdefault(row["destination"], {})
                d[row["state"]] = d.get(row["state"], 0) + 1
            out.append({"id": job.id, "kind": job.kind, "study_instance_uid": job.study_uid, "state": job.state,
                        "attempts": job.attempts, "created_at": job.created_at, "started_at": job.started_at,
                        "finished_at": job.finished_at, "error": job.error, "warnings": job.warnings,
                        "superseded_by": job.superseded_by, "deliveries": deliveries})
        return out

    def health(self) -> dict[str, Any]:
        checks: dict[str, dict[str, Any]] = {}
        checks["listener"] = self.listener.status()  # no probe connection: it would take a slot
        try:
            with self.index.transaction() as c:
                c.execute("SELECT 1")
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
        log.info("storage root %s; %d worker(s)", self.root, self.config.processing.workers)

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
        self.index.close()
        log.info("stopped")

    def serve_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.stop()
