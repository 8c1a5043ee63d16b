"""Ingest throughput: storescu pushes a whole-body phantom to dcmtk storescp, Orthanc and the node.

Runs alternate (storescp, Orthanc, node, storescp, ...) so machine noise hits all alike; each
receiver starts fresh for each run. Every dcmtk tool and Orthanc runs with TCP_NODELAY=1.
Usage: python -m bench.ingest [--runs 3] [--size wholebody]
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
from tests.peers import PEER_ENV, NodeProcess, Orthanc, free_port, wait_for  # noqa: E402


def push(files_dir: Path, port: int, called_ae: str) -> float:
    start = time.perf_counter()
    result = subprocess.run(["storescu", "-aec", called_ae, "+sd", "+r", "127.0.0.1", str(port), str(files_dir)],
                            capture_output=True, text=True, env=PEER_ENV, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
    return elapsed


def run_storescp(files_dir: Path, work: Path) -> tuple[float, float]:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "-od", str(out), "+B", str(port)], env=PEER_ENV,
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


def run_node(files_dir: Path, work: Path) -> tuple[float, float]:
    node = NodeProcess(work / "node", {"ingest": {"stable_after_s": 600, "force_after_s": 3600}}).start()
    try:
        seconds = push(files_dir, node.port, node.ae_title)
        assert node.proc is not None
        return seconds, rss_peak_mb(node.proc.pid)
    finally:
        node.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", default="wholebody", choices=("small", "wholebody"))
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
    print(f"\n{n_files} instances, {total_mb:.0f} MB, one association per run, medians of {args.runs} runs")
    print(f"{'receiver':<12} {'s':>7} {'inst/s':>8} {'MB/s':>7} {'peak RSS MB':>12}  node/receiver time")
    node_s = statistics.median(times["iodine-node"])
    summary = {}
    for name in receivers:
        s = statistics.median(times[name])
        summary[name] = {"seconds": s, "instances_per_s": n_files / s, "mb_per_s": total_mb / s,
                         "peak_rss_mb": max(rss[name]), "runs": times[name]}
        print(f"{name:<12} {s:7.2f} {n_files / s:8.0f} {total_mb / s:7.1f} {max(rss[name]):12.0f}  {node_s / s:6.2f}")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps({"instances": n_files, "mb": total_mb, "receivers": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
