"""Archive re-processing on Dask (node.batch, `iodine-node process --workers N`).

The Dask run uses a real LocalCluster (worker processes); its results are compared with a serial
run of the same studies file by file (result_fingerprint: only wall-clock values left out).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from node.batch import StudyOutcome, plan_batch, progress_line, result_fingerprint, summary_lines
from node.cli import main
from node.uids import derive_uid


def test_progress_line_counts_and_estimates() -> None:
    assert progress_line(0, 8, 0, 3.0) == "done 0/8 (0 failed), 3 s elapsed, ETA -"
    # 2 of 8 done in 40 s: 6 left at 20 s each
    assert progress_line(2, 8, 1, 40.0) == "done 2/8 (1 failed), 40 s elapsed, ETA 120 s"


def test_summary_names_a_failure_with_its_reason() -> None:
    lines = summary_lines([StudyOutcome("1.2.3", True, lesions=3, avid=2, files=("a", "b"), seconds=1.0, worker="w"),
                           StudyOutcome("1.2.4", False, "SuvError: RadionuclideHalfLife missing")])
    assert lines[0].startswith("study 1.2.3: 3 foci, 2 iodine-avid, 2 files")
    assert lines[1] == "study 1.2.4: FAILED: SuvError: RadionuclideHalfLife missing"


def test_fingerprint_ignores_run_times_but_not_content(tmp_path: Path) -> None:
    def write(folder: Path, seconds: float, suv_max: float) -> dict[str, str]:
        folder.mkdir()
        doc = {"seconds": {"detect": seconds}, "lesions": [{"id": 1, "suv_max": suv_max}]}
        (folder / "results.json").write_text(json.dumps(doc))
        (folder / "lesions.csv").write_text(f"id,suv_max\n1,{suv_max}\n")
        return result_fingerprint(folder)

    first = write(tmp_path / "a", 1.5, 7.25)
    assert first == write(tmp_path / "b", 9.0, 7.25)
    assert first != write(tmp_path / "c", 1.5, 7.26)


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns("truth.json"))


def _corrupt_study(src: Path, dst: Path) -> str:
    """A copy of a study (new Study/Series/SOP UIDs) whose middle PET slice is cut off inside its
    pixel data, as a broken archive copy would be: the headers read, the pixels do not."""
    study_uid = derive_uid("test_batch", "corrupt study")
    pet = sorted((src / "PT").iterdir())
    (dst / "PT").mkdir(parents=True)
    for n, path in enumerate(pet):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = derive_uid("test_batch", "corrupt series")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = derive_uid("test_batch", "corrupt", n)
        out = dst / "PT" / path.name
        ds.save_as(out, enforce_file_format=True)
        if n == len(pet) // 2:
            data = out.read_bytes()
            out.write_bytes(data[: len(data) - len(ds.PixelData) // 2])
    return study_uid


@pytest.fixture(scope="module")
def archive(phantom_factory, tmp_path_factory):
    """good/: 4 small studies; all/: the same 4 plus one corrupt study."""
    base = tmp_path_factory.mktemp("archive")
    uids = []
    for seed in range(1, 5):
        ph = phantom_factory(seed=seed, vendor="siemens", noise=0.15)
        uids.append(ph.truth["study_instance_uid"])
        _link_tree(ph.out_dir, base / "good" / f"s{seed}")
        _link_tree(ph.out_dir, base / "all" / f"s{seed}")
    corrupt = _corrupt_study(phantom_factory(seed=1, vendor="siemens", noise=0.15).out_dir, base / "all" / "broken")
    return base, uids, corrupt


@pytest.mark.slow
def test_dask_batch_matches_serial_run_and_isolates_a_corrupt_study(archive, capsys) -> None:
    base, uids, corrupt = archive
    serial, parallel = base / "serial", base / "parallel"
    assert main(["process", str(base / "good"), "--output", str(serial)]) == 0
    capsys.readouterr()

    # 2 Dask worker processes over the 4 good studies and the corrupt one
    assert main(["process", str(base / "all"), "--output", str(parallel), "--workers", "2"]) == 1
    out, err = capsys.readouterr()
    assert f"study {corrupt}: FAILED: " in out
    reason = out.split(f"study {corrupt}: FAILED: ")[1].splitlines()[0]
    assert len(reason) > 10, reason
    assert "4 processed, 1 failed, 0 skipped" in out
    assert "done 5/5 (1 failed)" in err
    assert not (parallel / corrupt).exists()
    for uid in uids:
        assert f"study {uid}: " in out and f"study {uid}: FAILED" not in out
        expected = result_fingerprint(serial / uid)
        assert {"results.json", "lesions.csv", "seg.dcm", "sr.dcm"} <= set(expected)
        assert result_fingerprint(parallel / uid) == expected, uid
        # the SOP Instance UIDs themselves are the serial run's (deterministic UIDs)
        for name in ("seg.dcm", "sr.dcm"):
            assert (pydicom.dcmread(parallel / uid / name).SOPInstanceUID
                    == pydicom.dcmread(serial / uid / name).SOPInstanceUID)

    # resume: a re-run leaves the 4 studies with results alone and tries only the failed one again
    plan = plan_batch(base / "all", parallel)
    assert sorted(plan.done) == sorted(uids)
    assert [t.study_uid for t in plan.tasks] == [corrupt]
    before = {uid: (parallel / uid / "results.json").stat().st_mtime_ns for uid in uids}
    assert main(["process", str(base / "all"), "--output", str(parallel), "--workers", "1"]) == 1
    out, _err = capsys.readouterr()
    assert "4 study(ies) already have results" in out
    assert "0 processed, 1 failed, 4 skipped (had results)" in out
    assert {uid: (parallel / uid / "results.json").stat().st_mtime_ns for uid in uids} == before


@pytest.mark.peer
def test_an_existing_dask_cluster_runs_the_batch(phantom_factory, tmp_path: Path, capsys) -> None:
    """--scheduler: a separately started `dask scheduler` and `dask worker` (what a research cluster
    runs) get the tasks; a study that fails comes back with its reason through them."""
    from tests.peers import free_port, wait_for

    only_corrupt = tmp_path / "input"
    corrupt = _corrupt_study(phantom_factory(seed=1, vendor="siemens", noise=0.15).out_dir, only_corrupt / "broken")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "ab")  # noqa: SIM115 - handed to the child processes
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
                               "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_for(lambda: "Register worker" in (tmp_path / "dask.log").read_text(errors="replace"), 120,
                 "the dask worker to join the scheduler")
        assert main(["process", str(only_corrupt), "--output", str(tmp_path / "out"), "--scheduler", address]) == 1
        out, err = capsys.readouterr()
        assert f"processing 1 study(ies) on scheduler {address}" in err
        assert f"study {corrupt}: FAILED: " in out and "0 processed, 1 failed, 0 skipped" in out
        assert scheduler.poll() is None and worker.poll() is None  # the cluster outlives the batch
    finally:
        for proc in (worker, scheduler):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
