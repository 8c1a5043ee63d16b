"""Job queue throughput: SQLite against PostgreSQL, with 1, 2 and 4 worker processes, in one run.

Each worker process opens its own store (its own node id) and loops: claim a job (a lease), publish
it with three outbox rows (SEG, SR, SC to one destination), until the queue is empty. jobs/s is the
number of jobs over the wall time from the start signal to the last worker's end; every job must
be claimed exactly once (checked). This is the index's share of a job; the quantification itself
(about 10-30 s per study here) is not included.

Then the index's share of ingest: add_instance commits per second with 1 and 4 writer processes.

    python -m bench.queue [--jobs 400] [--instances 800]   (PostgreSQL: a throw-away local server)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.store import Delivery, InstanceRecord, open_store

WORKERS = (1, 2, 4)


def fill(target: str, jobs: int) -> None:
    """`jobs` studies, one instance each, each with a queued job (setup, not timed)."""
    store = open_store(target, node_id="filler")
    try:
        for n in range(jobs):
            study = f"1.2.826.0.1.3680043.10.1.{n}"
            store.studies.add_instance(InstanceRecord(f"{study}.1.1", "1.2.840.10008.5.1.4.1.1.128", f"{study}.1",
                                                      study, "1.2.840.10008.1.2.1", f"studies/{study}/1.dcm", 1000,
                                                      modality="PT"), "bench", "BENCH")
            last = store.studies.study_info(study).last_received  # type: ignore[union-attr]
            store.jobs.queue("quantify", study, {}, [], expect_last_received=last)
    finally:
        store.close()


def worker(target: str, node_id: str, start: mp.synchronize.Event, out: mp.Queue) -> None:
    store = open_store(target, node_id=node_id)
    claimed: list[int] = []
    start.wait()
    while True:
        job = store.jobs.claim(node_id, lease_s=60)
        if job is None:
            break
        study = job.study_uid

        def publish(study: str = study) -> tuple[dict, list[Delivery]]:
            return {"lesions": 3}, [Delivery("pacs", kind, f"outputs/{study}/v/{kind}.dcm", f"{study}.9.{i}", "1.2",
                                             "0" * 64) for i, kind in enumerate(("seg", "sr", "sc"))]

        store.jobs.publish_results(job.id, publish, node_id=node_id)
        claimed.append(job.id)
    store.close()
    out.put(claimed)


def writer(target: str, n: int, instances: int, start: mp.synchronize.Event, out: mp.Queue) -> None:
    """Index `instances` instances of one whole-body-sized study, one transaction each (as ingest does)."""
    store = open_store(target, node_id=f"ingest-{n}")
    study = f"1.2.826.0.1.3680043.10.2.{n}"
    start.wait()
    for i in range(instances):
        store.studies.add_instance(InstanceRecord(f"{study}.1.{i}", "1.2.840.10008.5.1.4.1.1.128", f"{study}.1",
                                                  study, "1.2.840.10008.1.2.1", f"studies/{study}/{i}.dcm", 350_000,
                                                  modality="PT", image_index=i + 1), "bench", "BENCH")
    store.close()
    out.put(instances)


def measure_ingest(target: str, instances: int, writers: int) -> float:
    """Index commits per second: `writers` processes (concurrent associations), each its own study."""
    open_store(target, node_id="migrate").close()
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(target, n, instances, start, out)) for n in range(writers)]
    for p in procs:
        p.start()
    time.sleep(2.0)
    began = time.perf_counter()
    start.set()
    total = sum(out.get(timeout=600) for _ in procs)
    seconds = time.perf_counter() - began
    for p in procs:
        p.join(60)
    return total / seconds


def measure(target: str, jobs: int, workers: int) -> float:
    fill(target, jobs)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(target, f"bench-{n}", start, out)) for n in range(workers)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let every worker connect and import before the clock starts
    began = time.perf_counter()
    start.set()
    claimed = [job for _ in procs for job in out.get(timeout=600)]
    seconds = time.perf_counter() - began
    for p in procs:
        p.join(60)
    if sorted(claimed) != sorted(set(claimed)) or len(claimed) != jobs:
        raise AssertionError(f"{len(claimed)} claims for {jobs} jobs, {len(claimed) - len(set(claimed))} twice")
    return jobs / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--instances", type=int, default=800, help="per writer (a whole-body study: 807)")
    args = parser.parse_args()
    results: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in WORKERS:
            results["sqlite", workers] = measure(str(Path(tmp) / f"sqlite-{workers}"), args.jobs, workers)
            print(f"sqlite      {workers} worker(s): {results['sqlite', workers]:8.1f} jobs/s", flush=True)
        from tests.pg import create_database, postgres_server

        with postgres_server() as server:  # Debian's PostgreSQL, fsync on, in a temp dir (tests/pg.py)
            for workers in WORKERS:
                results["postgresql", workers] = measure(create_database(server, "bench"), args.jobs, workers)
                print(f"postgresql  {workers} worker(s): {results['postgresql', workers]:8.1f} jobs/s", flush=True)
    ingest: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for writers in (1, 4):
            ingest["sqlite", writers] = measure_ingest(str(Path(tmp) / f"ingest-{writers}"), args.instances, writers)
        from tests.pg import create_database, postgres_server

        with postgres_server() as server:
            for writers in (1, 4):
                ingest["postgresql", writers] = measure_ingest(create_database(server, "ingest"), args.instances,
                                                               writers)
    print(f"\nindex writes of ingest (add_instance, one transaction per instance, {args.instances} per writer)")
    print(f"{'writers':>7}  {'sqlite inst/s':>13}  {'postgresql inst/s':>17} {'pg/sqlite':>9}")
    for writers in (1, 4):
        s, p = ingest["sqlite", writers], ingest["postgresql", writers]
        print(f"{writers:>7}  {s:>13.0f}  {p:>17.0f} {p / s:>9.2f}")
    base = results["sqlite", 1]
    print(f"\nclaim + publish (3 outbox rows) of {args.jobs} jobs; ratio to SQLite with 1 worker")
    print(f"{'workers':>7}  {'sqlite jobs/s':>13} {'ratio':>6}  {'postgresql jobs/s':>17} {'ratio':>6}")
    for workers in WORKERS:
        s, p = results["sqlite", workers], results["postgresql", workers]
        print(f"{workers:>7}  {s:>13.1f} {s / base:>6.2f}  {p:>17.1f} {p / base:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
