"""Run queued jobs in a pool of worker processes, so a crash or memory blow-up in processing
never takes down the listener. A job whose worker dies is marked failed with the reason.

Each claimed job is a lease of this node (store.node_id); the runner renews the leases of its
running jobs every lease_s / 3, so a node that dies loses its jobs to another node of a shared
index after lease_s, and a node that lost a lease (it stalled) never publishes that job."""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from node import results_store
from node.compare.study import ComparisonSettings
from node.crashpoints import crash_point
from node.logs import current_setup, setup_logging
from node.metrics import Metrics
from node.pipeline import JobError, run_job, use_index
from node.quant.study import QuantSettings
from node.store import LEASE_S, Delivery, Job, LeaseLost, Store

log = logging.getLogger(__name__)


def warm_up() -> None:
    import node.encode.objects
    import node.quant.study  # noqa: F401


def _exit_with_parent() -> None:
    """Die with `serve`: a worker whose parent was killed (kill -9, OOM killer) would otherwise live
    on under PID 1, holding memory and writing results nobody publishes. multiprocessing gives a
    spawned child a pipe from its parent (the parent sentinel); it reads as closed when the parent
    dies, whoever killed it."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # waits on the sentinel pipe
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _init_worker(max_memory_mb: int | None, log_level: int, log_format: str, index_target: str | None = None) -> None:
    _exit_with_parent()
    if index_target:
        use_index(index_target)
    setup_logging(log_level, log_format)
    if max_memory_mb:
        limit = max_memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class JobRunner:
    def __init__(self, store: Store, storage_root: Path, workers: int, settings: QuantSettings,
                 max_memory_mb: int | None = None, poll_s: float = 0.5,
                 destinations: Sequence[Any] = (), metrics: Metrics | None = None,
                 comparison: ComparisonSettings | None = None, lease_s: float = LEASE_S) -> None:
        self.store = store
        self.lease_s = lease_s
        self._renewed_at = 0.0
        self.comparison = comparison
        self.metrics = metrics
        self.settings = settings
        self.destinations = list(destinations)
        self.storage_root = storage_root
        self.workers = workers
        self.max_memory_mb = max_memory_mb
        self.poll_s = poll_s
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[Future[dict], Job] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> None:
        # Start the workers now and let them import the pipeline, so the first study does not wait
        # for numpy, SimpleITK and highdicom to load (~1-2 s).
        self._pool = self._new_pool()
        for _ in range(self.workers):
            self._pool.submit(warm_up)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; jobs still running go back to the queue at once (not after their lease)."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if not self._thread.is_alive():
            for job in self._running.values():
                if self.store.jobs.release(job.id, self.store.node_id):
                    log.info("job %d given back to the queue: the node is stopping", job.id)
            self._running.clear()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: the listener's threads and sockets are not forked into workers.
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker,
                                   initargs=(self.max_memory_mb, *current_setup(), self.store.target))

    def alive(self) -> bool:
        """The runner thread runs and its pool (if any) is not broken."""
        pool = self._pool
        return self._thread.is_alive() and not (pool is not None and getattr(pool, "_broken", False))

    def worker_pids(self) -> list[int]:
        pool = self._pool
        return list(pool._processes.keys()) if pool is not None and pool._processes else []  # noqa: SLF001

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._collect()
                self._heartbeat()
                while len(self._running) < self.workers:
                    job = self.store.jobs.claim(self.store.node_id, self.lease_s)
                    if job is None:
                        break
                    self._submit(job)
            except Exception:
                log.exception("job runner error")
            self._stop.wait(self.poll_s)

    def _heartbeat(self) -> None:
        """Renew the leases of the running jobs (every lease_s / 3); a lease lost is logged, and that
        job's outcome will be refused (another node runs it now)."""
        now = time.monotonic()
        if now - self._renewed_at < self.lease_s / 3:
            return
        self._renewed_at = now
        for job in self._running.values():
            if not self.store.jobs.renew(job.id, self.store.node_id, self.lease_s):
                log.warning("job %d: lease lost (another node took it over, or it ended)", job.id)

    def _submit(self, job: Job) -> None:
        if self._pool is None:
            self._pool = self._new_pool()
        log.info("job %d started: %s of study %s (attempt %d)", job.id, job.kind, job.study_uid, job.attempts)
        future = self._pool.submit(run_job, job.kind, str(self.storage_root), job.study_uid, job.payload,
                                   self.settings, self.comparison)
        self._running[future] = job

    def _finish(self, job: Job, result: dict[str, Any]) -> None:
        """Publish a finished job's staged results and queue them for delivery, unless a newer job
        of the study superseded it meanwhile or another node took it over (store.jobs.publish_results
        decides in one transaction)."""
        staging = self.storage_root / result["staging"]

        def publish() -> tuple[dict[str, Any], list[Delivery]]:
            version = results_store.publish(self.storage_root, job.study_uid, staging, f"job-{job.id}-{job.attempts}")
            crash_point("results-published")  # durable and linked, outbox not yet committed
            rel = version.relative_to(self.storage_root)
            objects = [{**o, "path": str(rel / o["path"])} for o in result.get("objects", [])]
            final = {**{k: v for k, v in result.items() if k != "staging"}, "version_dir": str(rel),
                     "objects": objects, "files": [f"{result['results_dir']}/{f}" for f in result.get("files", [])]}
            deliveries = [Delivery(d.name, o["kind"], o["path"], o["sop_instance_uid"], o["sop_class_uid"],
                                   o.get("sha256")) for o in objects for d in self.destinations if o["kind"] in d.send]
            return final, deliveries

        try:
            # (the crash hook fires after the commit, before the sender can read the new rows)
            published = self.store.jobs.publish_results(job.id, publish, self.store.node_id,
                                                        on_committed=lambda: crash_point("outbox-committed"))
        except LeaseLost as exc:
            shutil.rmtree(staging, ignore_errors=True)
            log.warning("job %d of study %s: results not published: %s", job.id, job.study_uid, exc)
            return
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.store.jobs.fail(job.id, f"results could not be published: {type(exc).__name__}: {exc}",
                                 self.store.node_id)
            raise
        if not published:
            shutil.rmtree(staging, ignore_errors=True)
            log.warning("job %d of study %s was superseded by a newer job while it ran: results not published",
                        job.id, job.study_uid)
            return
        # outputs/<study>/<version>/...: the versions an undelivered row still needs
        needed = self.store.outbox.needed_paths(job.study_uid)
        keep = {Path(p).parts[2] for p in needed if len(Path(p).parts) > 3}
        results_store.prune(self.storage_root, job.study_uid, keep)

    def _fail(self, job: Job, error: str) -> None:
        if not self.store.jobs.fail(job.id, error, self.store.node_id):
            log.warning("job %d: its failure is not recorded: another node took the job over", job.id)

    def _collect(self) -> None:
        broken = False
        for future in [f for f in self._running if f.done()]:
            job = self._running.pop(future)
            elapsed = time.time() - (job.started_at or time.time())
            try:
                result = future.result()
            except BrokenProcessPool:
                broken = True
                self._fail(job, "worker process died while running the job (killed, crashed or out of memory)")
                log.error("job %d failed: its worker process died", job.id)
            except JobError as exc:
                self._fail(job, str(exc))
                log.error("job %d failed: %s", job.id, exc)
            except MemoryError:
                self._fail(job, f"out of memory (processing.max_memory_mb={self.max_memory_mb})")
                log.error("job %d failed: out of memory", job.id)
            except Exception as exc:
                self._fail(job, f"{type(exc).__name__}: {exc}")
                log.exception("job %d failed", job.id)
            else:
                self._finish(job, result)
                if self.metrics:
                    self.metrics.observe_processing(elapsed)
                found = ", ".join(f"{s['lesions']} foci ({s['metastases']} metastases, {s['avid']} avid)"
                                  for s in result.get("series", []))
                log.info("job %d done in %.1f s: study %s: %s", job.id, elapsed, job.study_uid, found or "-")
        if broken and self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
