"""Export throughput: the node's DICOM sender against storescu, same files, a fresh Orthanc each run.

Each run starts a new Orthanc (fsync on, as the tests run it) so neither sender meets instances the
PACS already holds; senders alternate (storescu, node, storescu, ...). One association per batch
for storescu and `node-1assoc`; `node-2assoc` spreads the batch over two associations at once
(destinations[].associations: 2, the node's default). Every dcmtk tool and Orthanc runs with TCP_NODELAY=1.
Usage: python -m bench.export [--runs 3] [--size wholebody] [--instances N] [--orthanc-pdu-kb 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, phantom  # noqa: E402
from node.config import parse_config  # noqa: E402
from node.export.base import Parcel  # noqa: E402
from node.export.dicom import DicomTarget  # noqa: E402
from tests.peers import PEER_ENV, Orthanc  # noqa: E402


def storescu(files_dir: Path, orthanc: Orthanc) -> float:
    t = time.perf_counter()
    subprocess.run(["storescu", "-aet", "BENCH", "-aec", orthanc.aet, "+sd", "+r", "127.0.0.1",
                    str(orthanc.dicom_port), str(files_dir)], env=PEER_ENV, capture_output=True, check=True)
    return time.perf_counter() - t


def node_sender(files: list[Path], orthanc: Orthanc, associations: int = 1) -> float:
    config = parse_config({"node": {"ae_title": "BENCH"}})
    target = DicomTarget(parse_config({"destinations": [{"name": "p", "ae_title": orthanc.aet, "host": "127.0.0.1",
                                                         "port": orthanc.dicom_port,
                                                         "associations": associations}]}).destinations[0], config)
    parcels = [Parcel(i, f, "", "", "") for i, f in enumerate(files)]
    t = time.perf_counter()
    outcomes = target.send(parcels)
    seconds = time.perf_counter() - t
    bad = [o for o in outcomes.values() if o.state != "delivered"]
    if bad:
        raise RuntimeError(f"{len(bad)} not delivered: {bad[0]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", default="wholebody", choices=("small", "wholebody"))
    parser.add_argument("--instances", type=int, default=0, help="send only the first N (0: all)")
    parser.add_argument("--orthanc-pdu-kb", type=int, default=16, help="Orthanc's MaximumPduLength (default 16 KiB)")
    args = parser.parse_args()
    if shutil.which("storescu") is None or shutil.which("Orthanc") is None:
        print("missing peer: storescu or Orthanc (make peers)", file=sys.stderr)
        return 2
    files = phantom(args.size).files
    files = files[:args.instances] if args.instances else files
    staged = Path(tempfile.mkdtemp(prefix="bench-export-files-"))
    for i, f in enumerate(files):  # one flat folder, the same order for both senders
        os.link(f, staged / f"{i:05d}.dcm")
    ordered = sorted(staged.iterdir())
    total_mb = sum(f.stat().st_size for f in ordered) / 1e6
    times: dict[str, list[float]] = {"storescu": [], "node-1assoc": [], "node-2assoc": []}
    try:
        for run in range(args.runs):
            for name in times:
                with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
                    orthanc = Orthanc(Path(work) / "orthanc", modalities={"bench": ["BENCH", "127.0.0.1", 1]},
                                      extra={"MaximumPduLength": args.orthanc_pdu_kb * 1024}).start()
                    try:
                        s = (storescu(staged, orthanc) if name == "storescu" else
                             node_sender(ordered, orthanc, 2 if name == "node-2assoc" else 1))
                        held = len(orthanc.get("/instances"))
                    finally:
                        orthanc.stop()
                if held != len(ordered):
                    raise RuntimeError(f"{name}: Orthanc holds {held} of {len(ordered)} instances")
                times[name].append(s)
                print(f"run {run + 1}: {name:<12} {s:6.2f} s", flush=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    n = len(ordered)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{n} instances, {total_mb:.0f} MB to Orthanc (MaximumPduLength {args.orthanc_pdu_kb} KiB), "
          f"medians of {args.runs} runs")
    for k, s in med.items():
        print(f"{k:<12} {s:7.2f} s {n / s:7.0f} inst/s")
    print(f"node sender / storescu: one association {med['node-1assoc'] / med['storescu']:.2f}, two associations "
          f"{med['node-2assoc'] / med['storescu']:.2f} (target <= 1.5); peak RSS of the sending Python process "
          f"{peak_mb:.0f} MB")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "export.json").write_text(json.dumps({"instances": n, "mb": total_mb, "runs": times, "medians": med,
                                                 "orthanc_pdu_kb": args.orthanc_pdu_kb}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
