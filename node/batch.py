"""Archive re-processing on Dask: `iodine-node process INPUT --output OUT --workers N | --scheduler ADDR`.

One study is one Dask task. The client reads the headers of INPUT once to group files by
StudyInstanceUID (file and folder names say nothing reliable about the study), skips studies whose
results folder is already complete (resume: OUT/<StudyUID>/ appears only by an atomic rename), and
submits the rest. A worker quantifies its study and writes OUT/<StudyUID>/ itself, so only a small
outcome travels back to the client. A study that fails is reported with its reason and the batch
goes on. The result files are those of a serial run, byte for byte, apart from the wall-clock
values a DICOM object records about its own making (`result_fingerprint` says which).

With `--scheduler tcp://HOST:8786` the workers of an existing cluster run the tasks: they need
iodine-node installed and INPUT and OUT at the same paths (a shared file system), as the client
sends paths, not pixel data.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class StudyTask:
    """One study to process: its files (absolute paths, as the workers will open them)."""

    study_uid: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class StudyOutcome:
    """What a worker sends back: enough for the progress line and the summary."""

    study_uid: str
    ok: bool
    reason: str | None = None
    lesions: int = 0
    avid: int = 0
    files: tuple[str, ...] = ()
    seconds: float = 0.0
    worker: str = ""


@dataclass(frozen=True)
class BatchPlan:
    tasks: tuple[StudyTask, ...]
    done: tuple[str, ...]  # studies with complete results already (resume)
    invalid: tuple[tuple[str, str], ...]  # (study UID as found, why it is not processed)
    not_dicom: tuple[str, ...] = field(default=())


def has_results(output: Path, study_uid: str) -> bool:
    """A study's results folder is complete once it exists with results.json: write_study_outputs
    fills a staging folder and renames it into place in one step."""
    return (output / study_uid / RESULTS_FILE).is_file()


def plan_batch(input_dir: Path, output: Path, resume: bool = True) -> BatchPlan:
    """Group INPUT's files by study (headers only) and decide what to run."""
    from node.assemble import group_by_study
    from node.uids import uid_problem

    files = sorted(p.resolve() for p in Path(input_dir).rglob("*") if p.is_file() and not p.name.startswith("."))
    studies, not_dicom = group_by_study(files)
    tasks: list[StudyTask] = []
    done: list[str] = []
    invalid: list[tuple[str, str]] = []
    for study_uid, series in sorted(studies.items()):
        problem = uid_problem(study_uid)
        if problem is not None:  # it would name the output folder: never from an invalid value
            invalid.append((study_uid[:70], f"StudyInstanceUID {problem}"))
        elif resume and has_results(output, study_uid):
            done.append(study_uid)
        else:
            paths = tuple(sorted(str(p) for s in series.values() for p in s.paths))
            tasks.append(StudyTask(study_uid, paths))
    return BatchPlan(tuple(tasks), tuple(done), tuple(invalid), tuple(not_dicom))


def process_one(task: StudyTask, settings: Any, output: str) -> StudyOutcome:
    """Quantify one study and write OUT/<StudyUID>/ (runs on a Dask worker). Never raises for a bad
    study: the reason comes back in the outcome, so one study cannot stop the batch."""
    from node.assemble import group_by_study, process_study
    from node.output.files import write_study_outputs

    started = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        studies, unreadable = group_by_study(Path(p) for p in task.paths)
        series = studies.get(task.study_uid)
        if series is None:
            raise ValueError(f"no readable file of the study left: {'; '.join(unreadable[:3])}")
        results = process_study(series, settings)
        written = write_study_outputs(Path(output) / task.study_uid, results, settings)
    except Exception as exc:  # noqa: BLE001 - any failure of one study is its outcome, reported with its reason
        return StudyOutcome(task.study_uid, False, f"{type(exc).__name__}: {exc}",
                            seconds=time.perf_counter() - started, worker=worker)
    lesions = [les for _result, doc in results for les in doc["lesions"]]
    return StudyOutcome(task.study_uid, True, None, len(lesions), sum(1 for x in lesions if x["iodine_avid"]),
                        tuple(str(p) for p in written), time.perf_counter() - started, worker)


def progress_line(done: int, total: int, failed: int, elapsed_s: float) -> str:
    """`done 3/8 (1 failed), 41 s elapsed, ETA 68 s`: the ETA assumes the remaining studies take as long
    on average as the finished ones (no estimate before the first)."""
    eta = f"ETA {elapsed_s / done * (total - done):.0f} s" if done else "ETA -"
    return f"done {done}/{total} ({failed} failed), {elapsed_s:.0f} s elapsed, {eta}"


def run_batch(tasks: Sequence[StudyTask], settings: Any, output: Path, *, workers: int | None = None,
              scheduler: str | None = None, on_outcome: Callable[[StudyOutcome, int, int, float], None] | None = None,
              ) -> list[StudyOutcome]:
    """Run every task on a Dask LocalCluster of `workers` processes (one thread each: the
    quantification is numpy code that holds the GIL often) or on the cluster at `scheduler`.
    on_outcome(outcome, done, failed, elapsed_s) is called as each study finishes, in finishing order.
    Returns the outcomes in task order."""
    from distributed import Client, LocalCluster, as_completed

    if (workers is None) == (scheduler is None):
        raise ValueError("give either workers (a local cluster) or scheduler (an existing cluster)")
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
    try:
        with Client(cluster if cluster is not None else scheduler) as client:
            shared = client.scatter(settings, broadcast=True)
            futures = {client.submit(process_one, task, shared, str(output.resolve()), key=f"study-{task.study_uid}",
                                     pure=False): task for task in tasks}
            outcomes: dict[str, StudyOutcome] = {}
            failed = 0
            for future in as_completed(futures):
                task = futures[future]
                if future.status == "finished":
                    outcome = future.result()
                else:  # the worker itself died (memory, a crash): the study is reported, the rest go on
                    outcome = StudyOutcome(task.study_uid, False, f"worker lost: {future.exception()!r}")
                failed += 0 if outcome.ok else 1
                outcomes[task.study_uid] = outcome
                if on_outcome is not None:
                    on_outcome(outcome, len(outcomes), failed, time.perf_counter() - started)
    finally:
        if cluster is not None:
            cluster.close()
    return [outcomes[t.study_uid] for t in tasks]


# DICOM attributes that record when an object was made, not what it holds: they differ between any
# two runs. (0020,9164) DimensionOrganizationUID: highdicom's Segmentation draws it at random
# (uuid) on construction; it names the dimension organisation, not the segmentation.
WALL_CLOCK_TAGS = frozenset({0x00080012, 0x00080013, 0x00080023, 0x00080033, 0x00181012, 0x00181014, 0x0018A002,
                             0x00209164})


def _strip(ds: Any) -> None:
    for elem in list(ds):
        if elem.tag in WALL_CLOCK_TAGS:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                _strip(item)


def result_fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 of every result file under `folder` (relative path -> digest), with the wall-clock
    values left out (WALL_CLOCK_TAGS; results.json's `seconds`, the run time of each step): two runs
    over the same inputs must give equal fingerprints, whichever worker ran which study."""
    import pydicom

    out: dict[str, str] = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            _strip(ds)
            data = json.dumps(ds.to_json_dict(), sort_keys=True).encode()
        elif path.name == RESULTS_FILE:
            doc = json.loads(path.read_text(encoding="utf-8"))
            doc.pop("seconds", None)
            data = json.dumps(doc, sort_keys=True).encode()
        else:
            data = path.read_bytes()
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def summary_lines(outcomes: Iterable[StudyOutcome]) -> list[str]:
    """One line per study, failures with their reason."""
    lines = []
    for o in outcomes:
        if o.ok:
            lines.append(f"study {o.study_uid}: {o.lesions} foci, {o.avid} iodine-avid, {len(o.files)} files "
                         f"({o.seconds:.1f} s on {o.worker})")
        else:
            lines.append(f"study {o.study_uid}: FAILED: {o.reason}")
    return lines
