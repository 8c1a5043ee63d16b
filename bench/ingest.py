"""Ingest throughput: storescu pushes a phantom to dcmtk storescp, Orthanc and the node.

Runs alternate (storescp, Orthanc, node, storescp, ...) so machine noise hits all alike; each
receiver starts fresh for each run. Every dcmtk tool and Orthanc runs with TCP_NODELAY=1.
--concurrent N: N storescu processes at once, each pushing its own study (copies of the phantom
with new patient and UIDs), as several scanners do; the wall time until the last one is done. The
node runs with one listener process and with one per core (node.listener_processes); storescp
with --fork (a process per association).
Usage: python -m bench.ingest [--runs 3] [--size wholebody] [--concurrent 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import phantom, rss_peak_mb  # noqa: E402
from tests.peers import PEER_ENV, NodeProcess, Orthanc, free_port, pid_children, wait_for  # noqa: E402

DIRS: list[Path] = []  # one folder per concurrent sender (set by main)


def push(files_dir: Path, port: int, called_ae: str) -> float:
    """storescu of `files_dir`, or of every folder in DIRS at once (one process each)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", called_ae, "+sd", "+r", "127.0.0.1", str(port), str(d)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=PEER_ENV)
             for d in (DIRS or [files_dir])]
    outputs = [p.communicate()[0] for p in procs]
    elapsed = time.perf_counter() - start
    for p, out in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {out.decode(errors='replace')[-2000:]}")
    return elapsed


def copies(files: list[Path], n: int, size: str) -> list[Path]:
    """n folders, each one study: the phantom with new patient ID and Study/Series/SOP UIDs (cached)."""
    import pydicom
    from pydicom.uid import generate_uid

    out = []
    for k in range(n):
        folder = ROOT / "bench" / "out" / f"copies-{size}" / f"study{k}"
        if not folder.is_dir() or len(list(folder.iterdir())) != len(files):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            study, series = generate_uid(prefix="2.25."), {}
            for i, f in enumerate(files):
                ds = pydicom.dcmread(f)
                ds.PatientID = f"BENCH{k}"
                ds.StudyInstanceUID = study
                ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid(prefix="2.25."))
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
                ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
        out.append(folder)
    return out


def run_storescp(files_dir: Path, work: Path) -> tuple[float, float]:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    fork = ["--fork"] if DIRS else []
    proc = subprocess.Popen(["storescp", *fork, "-od", str(out), "+B", str(port)], env=PEER_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["echoscu", "127.0.0.1", str(port)], env=PEER_ENV,
                                        capture_output=True, check=False).returncode == 0, 10, "storescp")
        seconds = push(files_dir, port, "ANY-SCP")
        return seconds, rss_peak_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def run_orthanc(files_dir: Path, work: Path) -> tuple[float, float]:
    orthanc = Orthanc(work / "orthanc", modalities={"bench": ["STORESCU", "127.0.0.1", 1]}).start()
    try:
        seconds = push(files_dir, orthanc.dicom_port, orthanc.aet)
        assert orthanc.proc is not None
        return seconds, rss_peak_mb(orthanc.proc.pid)
    finally:
        orthanc.stop()


def run_node(files_dir: Path, work: Path, processes: int | None = 1) -> tuple[float, float]:
    """processes: node.listener_processes (None: one per core). Peak RSS: the service's plus its
    listener processes' (each process's peak; their sum bounds the peak of the whole)."""
    node = NodeProcess(work / "node", {"ingest": {"stable_after_s": 600, "force_after_s": 3600},
                                       "node": {"listener_processes": processes}}).start(timeout=180)
    try:
        assert node.proc is not None
        wait_for(lambda: node.http_get("/healthz")[0] == 200, 120, "the node's listeners")
        seconds = push(files_dir, node.port, node.ae_title)
        pids = [node.proc.pid, *(p for p in pid_children(node.proc.pid)
                                 if b"node.ingest.pool" in Path(f"/proc/{p}/cmdline").read_bytes())]
        return seconds, sum(rss_peak_mb(p) for p in pids)
    finally:
        node.stop()


def run_node_per_core(files_dir: Path, work: Path) -> tuple[float, float]:
    return run_node(files_dir, work, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", default="wholebody", choices=("small", "wholebody"))
    parser.add_argument("--concurrent", type=int, default=0, help="N storescu processes, N studies, at once")
    args = parser.parse_args()
    for tool in ("storescu", "storescp", "echoscu", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"missing peer: {tool} (make peers)", file=sys.stderr)
            return 2
    study = phantom(args.size)
    files = study.files
    n_files = len(files)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    staged = Path(tempfile.mkdtemp(prefix="bench-ingest-files-"))
    for f in files:  # one flat folder: storescu sends in this order
        os.link(f, staged / f"{f.parent.name}_{f.name}")
    receivers = {"storescp": run_storescp, "orthanc": run_orthanc, "iodine-node": run_node}
    if args.concurrent:
        DIRS[:] = copies(files, args.concurrent, args.size)
        n_files, total_mb = n_files * args.concurrent, total_mb * args.concurrent
        receivers = {"storescp": run_storescp, "orthanc": run_orthanc, "iodine-node": run_node,
                     f"node-{os.cpu_count()}proc": run_node_per_core}
    times: dict[str, list[float]] = {k: [] for k in receivers}
    rss: dict[str, list[float]] = {k: [] for k in receivers}
    try:
        for run in range(args.runs):
            for name, fn in receivers.items():
                with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as work:
                    seconds, peak = fn(staged, Path(work))
                times[name].append(seconds)
                rss[name].append(peak)
                print(f"run {run + 1}: {name:<12} {seconds:6.2f} s  peak RSS {peak:6.0f} MB", flush=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    how = f"{args.concurrent} concurrent associations" if args.concurrent else "one association"
    print(f"\n{n_files} instances, {total_mb:.0f} MB, {how} per run, medians of {args.runs} runs")
    print(f"{'receiver':<12} {'s':>7} {'inst/s':>8} {'MB/s':>7} {'peak RSS MB':>12}  node/receiver time")
    node_s = statistics.median(times[list(receivers)[-1]])
    summary = {}
    for name in receivers:
        s = statistics.median(times[name])
        summary[name] = {"seconds": s, "instances_per_s": n_files / s, "mb_per_s": total_mb / s,
                         "peak_rss_mb": max(rss[name]), "runs": times[name]}
        print(f"{name:<12} {s:7.2f} {n_files / s:8.0f} {total_mb / s:7.1f} {max(rss[name]):12.0f}  {node_s / s:6.2f}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    name = f"ingest-concurrent{args.concurrent}.json" if args.concurrent else "ingest.json"
    (out / name).write_text(json.dumps({"instances": n_files, "mb": total_mb, "concurrent": args.concurrent,
                                        "receivers": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
