"""Ingest of one whole-body study split over two nodes against one node, in one run.

The same two associations every time (storescu: the CT series and the PET series at once, TCP_NODELAY=1):
- one node, embedded SQLite index (the default; the reference);
- one node, PostgreSQL index;
- two nodes on one PostgreSQL index and one storage root, CT to node A and PET to node B.
Wall time from the start of both pushes to the last acknowledgement (an instance is acknowledged
only once it is fsynced and indexed). Nodes start fresh for each run and runs alternate. The
machine running this has 2 cores: the two nodes share them, so the split shows the cost of the
shared index, not the gain of a second machine.

    python -m bench.split [--runs 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import phantom
from tests.peers import PEER_ENV, NodeProcess
from tests.pg import create_database, postgres_server

DSN_ENV = "IODINE_BENCH_INDEX_DSN"


def push(targets: list[tuple[NodeProcess, Path]]) -> float:
    """Start one storescu per (node, folder) at once; seconds until the last one exits."""
    began = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", n.ae_title, "+sd", "+r", "127.0.0.1", str(n.port), str(folder)],
                              env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n, folder in targets]
    for p in procs:
        _out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise AssertionError(f"storescu failed: {err.decode()[-1000:]}")
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    study = phantom("wholebody")
    ct, pet = study.out_dir / "CT", study.out_dir / "PT"
    count = len(study.ct_files) + len(study.pet_files)
    times: dict[str, list[float]] = {"1 node, SQLite": [], "1 node, PostgreSQL": [], "2 nodes, PostgreSQL": []}
    with tempfile.TemporaryDirectory() as tmp, postgres_server() as server:
        work = Path(tmp)
        for run in range(args.runs):
            for label in times:
                base = work / f"{run}-{label.replace(' ', '').replace(',', '-')}"
                config = {"storage": {"root": str(base / "root"), "min_free_gb": 0},
                          "ingest": {"stable_after_s": 600, "force_after_s": 3600}}  # no job during the push
                env = {}
                if "PostgreSQL" in label:
                    config["index"] = {"backend": "postgresql", "dsn_env": DSN_ENV}
                    env[DSN_ENV] = create_database(server, "split")
                nodes = [NodeProcess(base / "a", config, env)]
                if label.startswith("2"):
                    nodes.append(NodeProcess(base / "b", config, env))
                try:
                    for n in nodes:
                        n.start()
                    targets = [(nodes[0], ct), (nodes[-1], pet)]
                    times[label].append(push(targets))
                finally:
                    for n in nodes:
                        n.stop()
                print(f"run {run + 1} {label:<20} {times[label][-1]:6.2f} s", flush=True)
    ref = statistics.median(times["1 node, SQLite"])
    print(f"\nwhole-body study ({count} instances) as two concurrent associations (CT, PET); median of {args.runs}")
    print(f"{'receiver':<22} {'s':>6} {'instances/s':>12} {'ratio to 1 node SQLite':>23}")
    for label, values in times.items():
        s = statistics.median(values)
        print(f"{label:<22} {s:>6.2f} {count / s:>12.0f} {s / ref:>23.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
