"""Run queued jobs in a pool of worker processes, so a crash or memory blow-up in processing
never takes down the listener. A job whose worker dies is marked failed with the reason."""

from __future__ import annotations

import logging
import multiprocessing
import resource
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from node.compare.study import ComparisonSettings
from node.index import Index, Job
from node.logs import current_setup, setup_logging
from node.metrics import Metrics
from node.pipeline import JobError, run_job
from node.quant.study import QuantSettings

log = logging.getLogger(__name__)


def warm_up() -> None:
    import node.encode.objects
    import node.quant.study  # noqa: F401


def _init_worker(max_memory_mb: int | None, log_level: int, log_format: str) -> None:
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
                deliveries = [(d.name, o["kind"], o["path"], o["sop_instance_uid"], o["sop_class_uid"])
                              for o in result.get("objects", []) for d in self.destinations if o["kind"] in d.send]
                self.index.finish_job(job.id, result, None, deliveries)
                if self.metrics:
                    self.metrics.observe_processing(elapsed)
                found = ", ".join(f"{s['lesions']} foci ({s['metastases']} metastases, {s['avid']} avid)"
                                  for s in result.get("series", []))
                log.info("job %d done in %.1f s: study %s: %s", job.id, elapsed, job.study_uid, found or "-")
        if broken and self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
