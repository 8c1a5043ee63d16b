"""Archive re-processing: `iodine-node process` of 8 small studies on 1 and on 2 Dask workers, in one run.

Both runs use a LocalCluster (worker processes, one thread each) over the same input folder, so the
speed-up is the cluster's scaling alone; the serial command (no Dask) runs too, as the reference the
1-worker run should match. Each run writes its own output folder; the results of the runs are
compared file by file (node.batch.result_fingerprint) and must be identical.

    python -m bench.batch [--studies 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import OUT, phantom
from node.batch import result_fingerprint
from node.cli import main as cli


def run(args: list[str]) -> float:
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli(args)
    if code != 0:
        raise AssertionError(f"iodine-node {' '.join(args)} exited {code}:\n{err.getvalue()[-2000:]}")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    args = parser.parse_args()
    work = OUT / "batch"
    archive = work / "archive"
    shutil.rmtree(work, ignore_errors=True)
    uids = []
    for seed in range(1, args.studies + 1):
        ph = phantom("small", seed=100 + seed)
        shutil.copytree(ph.out_dir, archive / f"s{seed}", ignore=shutil.ignore_patterns("truth.json"))
        uids.append(ph.truth["study_instance_uid"])
    seconds = {
        "serial": run(["process", str(archive), "--output", str(work / "serial")]),
        "dask-1": run(["process", str(archive), "--output", str(work / "dask-1"), "--workers", "1"]),
        "dask-2": run(["process", str(archive), "--output", str(work / "dask-2"), "--workers", "2"]),
    }
    for uid in uids:
        reference = result_fingerprint(work / "serial" / uid)
        for name in ("dask-1", "dask-2"):
            if result_fingerprint(work / name / uid) != reference:
                raise AssertionError(f"{name}: results of study {uid} differ from the serial run")
    print(f"{args.studies} small studies (phantom seeds 101..{100 + args.studies}); results identical in all runs")
    print(f"{'run':<8} {'wall s':>8} {'studies/h':>10} {'speed-up vs dask-1':>19}")
    for name, s in seconds.items():
        print(f"{name:<8} {s:>8.1f} {3600 * args.studies / s:>10.0f} {seconds['dask-1'] / s:>19.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
