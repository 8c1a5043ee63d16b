"""Run queued jobs in a pool of worker processes, so a crash or memory blow-up in processing
never takes down the listener. A job whose worker dies is marked failed with the reason."""

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
from node.index import DEAD, PENDING, Delivery, Index, Job
from node.logs import current_setup, setup_logging
from node.metrics import Metrics
from node.pipeline import JobError, run_job
from node.quant.study import QuantSettings

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


def _init_worker(max_memory_mb: int | None, log_level: int, log_format: str) -> None:
    _exit_with_parent()
    setup_logging(log_level, log_format)
    if max_memory_mb:
        limit = max_memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class JobRunner:
    def __init__(self, index: Index, storage_root: Path, workers: int, settings: QuantSettings,
                 max_memory_mb: int | None = None, poll_s: float = 0.5,
                 destinations: Sequence[Any] = (), metrics: Metrics | None = None,
                 comparison: ComparisonSettings | None = None) -> None:
        self.index = index
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
        self._stop.set()
        self._thread.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: the listener's threads and sockets are not forked into workers.
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self.max_memory_mb, *current_setup()))

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
                while len(self._running) < self.workers:
                    job = self.index.claim_job()
                    if job is None:
                        break
                    self._submit(job)
            except Exception:
                log.exception("job runner error")
            self._stop.wait(self.poll_s)

    def _submit(self, job: Job) -> None:
        if self._pool is None:
            self._pool = self._new_pool()
        log.info("job %d started: %s of study %s (attempt %d)", job.id, job.kind, job.study_uid, job.attempts)
        future = self._pool.submit(run_job, job.kind, str(self.storage_root), job.study_uid, job.payload,
                                   self.settings, self.comparison)
        self._running[future] = job

    def _finish(self, job: Job, result: dict[str, Any]) -> None:
        """Publish a finished job's staged results and queue them for delivery, unless a newer job
        of the study superseded it meanwhile (Index.finish_job decides under the index lock)."""
        staging = self.storage_root / result["staging"]

        def publish() -> tuple[dict[str, Any], list[Delivery]]:
            version = results_store.publish(self.storage_root, job.study_uid, staging, f"job-{job.id}-{job.attempts}")
            crash_point("results-published")  # durable and linked, outbox not yet committed
            rel = version.relative_to(self.storage_root)
            objects = [{**o, "path": str(rel / o["path"])} for o in result.get("objects", [])]
            final = {**{k: v for k, v in result.items() if k != "staging"}, "version_dir": str(rel),
                     "objects": objects, "files": [f"{result['results_dir']}/{f}" for f in result.get("files", [])]}
            deliveries = [(d.name, o["kind"], o["path"], o["sop_instance_uid"], o["sop_class_uid"], o.get("sha256"))
                          for o in objects for d in self.destinations if o["kind"] in d.send]
            return final, deliveries

        try:
            with self.index.lock:  # (the crash hook below fires before the sender can read the new rows)
                published = self.index.finish_job(job.id, None, None, publish=publish)
                if published:
                    crash_point("outbox-committed")
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.index.finish_job(job.id, None, f"results could not be published: {type(exc).__name__}: {exc}")
            raise
        if not published:
            shutil.rmtree(staging, ignore_errors=True)
            log.warning("job %d of study %s was superseded by a newer job while it ran: results not published",
                        job.id, job.study_uid)
            return
        # outputs/<study>/<version>/...: the versions an undelivered row still needs
        needed = self.index.query("SELECT path FROM outbox WHERE study_uid=? AND state IN (?,?)",
                                  (job.study_uid, PENDING, DEAD))
        keep = {Path(r["path"]).parts[2] for r in needed if len(Path(r["path"]).parts) > 3}
        results_store.prune(self.storage_root, job.study_uid, keep)

    def _collect(self) -> None:
        broken = False
        for future in [f for f in self._running if f.done()]:
            job = self._running.pop(future)
            elapsed = time.time() - (job.started_at or time.time())
            try:
                result = future.result()
            except BrokenProcessPool:
                broken = True
                self.index.finish_job(job.id, None, "worker process died while running the job "
                                                    "(killed, crashed or out of memory)")
                log.error("job %d failed: its worker process died", job.id)
            except JobError as exc:
                self.index.finish_job(job.id, None, str(exc))
                log.error("job %d failed: %s", job.id, exc)
            except MemoryError:
                self.index.finish_job(job.id, None, f"out of memory (processing.max_memory_mb={self.max_memory_mb})")
                log.error("job %d failed: out of memory", job.id)
            except Exception as exc:
                self.index.finish_job(job.id, None, f"{type(exc).__name__}: {exc}")
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
