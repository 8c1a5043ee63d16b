"""Fetching a prior study from the PACS: the node's C-FIND + C-MOVE (into its listener) and C-GET
(through its ingest) against dcmtk's movescu -> storescp and getscu, same Orthanc, same study.

Prints seconds for each and the ratio node / dcmtk; for the C-MOVE also against a second Orthanc as
the destination (a receiver that, like the node, syncs and indexes what it stores).
Usage: python -m bench.priors [--size wholebody] [--associations 2] [--runs 3] (series the node
retrieves at once, each on its own association; dcmtk's tools retrieve the study over one).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import phantom, rss_peak_mb  # noqa: E402
from node.compare.priors import PriorQuery, _get, _move, find_prior_studies  # noqa: E402
from node.ingest.ingestor import Ingestor  # noqa: E402
from node.ingest.spool import Spool  # noqa: E402
from node.retrieve import ingest_store, spool_receiver  # noqa: E402
from node.store import open_store  # noqa: E402
from tests.peers import PEER_ENV, NodeProcess, Orthanc, free_port, wait_for  # noqa: E402


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=PEER_ENV, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="wholebody", choices=("small", "wholebody"))
    parser.add_argument("--associations", type=int, default=2, help="series retrieved at once (priors.query)")
    parser.add_argument("--runs", type=int, default=1, help="runs, each node then dcmtk; medians reported")
    args = parser.parse_args()
    study = phantom(args.size)
    uid = study.truth["study_instance_uid"]
    n_files = len(study.files)
    with tempfile.TemporaryDirectory(prefix="bench-priors-") as tmp:
        work = Path(tmp)
        # The node only stores here: a long stable window keeps its own job out of the timing. Each
        # run has a node of its own (empty), registered with Orthanc under the same name.
        nodes = [NodeProcess(work / f"node-{i}", {"ingest": {"stable_after_s": 3600, "force_after_s": 7200}})
                 for i in range(args.runs)]
        node = nodes[0]
        ref_port = free_port()
        orthanc = Orthanc(work / "orthanc", modalities={"node": [node.ae_title, "127.0.0.1", node.port],
                                                        "bench": ["BENCH", "127.0.0.1", 1],
                                                        "ref": ["REF", "127.0.0.1", ref_port]})
        orthanc.start()
        node.start()
        storescp = None
        try:
            run(["storescu", "-aet", "BENCH", "-aec", orthanc.aet, "+sd", "+r", "127.0.0.1",
                 str(orthanc.dicom_port), str(study.out_dir / "PT"), str(study.out_dir / "CT")])
            query = PriorQuery(orthanc.aet, "127.0.0.1", orthanc.dicom_port, node.ae_title, "move", node.ae_title,
                               300.0, associations=args.associations)
            reference = datetime.strptime(study.truth["scan_start_datetime"][:8], "%Y%m%d") + timedelta(days=30)
            t0 = time.perf_counter()
            priors = find_prior_studies(query, study.truth["patient"]["id"], "", reference, 90, set())
            find_s = time.perf_counter() - t0
            assert [p.study_uid for p in priors] == [uid], priors
            out = work / "storescp"
            out.mkdir()
            storescp = subprocess.Popen(["storescp", "-aet", "REF", "-od", str(out), str(ref_port)], env=PEER_ENV,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: _listening(ref_port), 30, "storescp to listen")
            times: dict[str, list[float]] = {"move": [], "ref_move": [], "ref_move_durable": [], "get": [],
                                             "ref_get": []}
            node_rss = 0.0
            for run_no in range(1, args.runs + 1):
                if run_no > 1:
                    node.stop()
                    node = nodes[run_no - 1]
                    orthanc.put("/modalities/node", {"AET": node.ae_title, "Host": "127.0.0.1", "Port": node.port})
                    node.start()
                t0 = time.perf_counter()
                _move(query, priors[0])
                times["move"].append(time.perf_counter() - t0)
                assert node.instance_count(uid) == n_files, node.instance_count(uid)

                get_root = work / f"get-store-{run_no}"
                t0 = time.perf_counter()
                get_root.mkdir()
                get_index = open_store(get_root)
                get_spool = Spool(get_root)
                get_store = ingest_store(get_spool, Ingestor(get_spool, get_index, 2**40), orthanc.aet)
                _get(PriorQuery(orthanc.aet, "127.0.0.1", orthanc.dicom_port, "BENCH", "get", "", 300.0,
                                associations=args.associations), priors[0], get_store,
                     spool_receiver(get_spool, get_store))
                get_index.close()
                times["get"].append(time.perf_counter() - t0)
                got = len(list((get_root / "studies").rglob("*.dcm")))
                assert got == n_files, got

                for f in out.iterdir():
                    f.unlink()
                times["ref_move"].append(run(["movescu", "-S", "-aet", "BENCH", "-aec", orthanc.aet, "-aem", "REF",
                                              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}",
                                              "127.0.0.1", str(orthanc.dicom_port)]))
                wait_for(lambda: len(list(out.iterdir())) == n_files, 60, "storescp to hold the study")
                # A durable receiver for comparison: a second Orthanc (SyncStorageArea: it fsyncs
                # what it stores, and indexes it), empty for each run.
                dest = Orthanc(work / f"dest-{run_no}", aet="DEST", modalities={"src": [orthanc.aet, "127.0.0.1",
                                                                                      orthanc.dicom_port]})
                dest.start()
                try:
                    orthanc.put("/modalities/dest", {"AET": "DEST", "Host": "127.0.0.1", "Port": dest.dicom_port})
                    times["ref_move_durable"].append(run([
                        "movescu", "-S", "-aet", "BENCH", "-aec", orthanc.aet, "-aem", "DEST", "-k",
                        "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}", "127.0.0.1",
                        str(orthanc.dicom_port)]))
                    held = len(dest.get("/instances"))
                    assert held == n_files, held
                finally:
                    dest.stop()
                ref_get_dir = work / f"getscu-{run_no}"
                ref_get_dir.mkdir()
                times["ref_get"].append(run(["getscu", "-S", "-aet", "BENCH", "-aec", orthanc.aet, "-od",
                                             str(ref_get_dir), "-k", "QueryRetrieveLevel=STUDY", "-k",
                                             f"StudyInstanceUID={uid}", "127.0.0.1", str(orthanc.dicom_port)]))
                print(f"run {run_no}: C-MOVE node {times['move'][-1]:.2f} s, movescu -> storescp "
                      f"{times['ref_move'][-1]:.2f} s, movescu -> Orthanc {times['ref_move_durable'][-1]:.2f} s; "
                      f"C-GET node {times['get'][-1]:.2f} s, getscu "
                      f"{times['ref_get'][-1]:.2f} s", flush=True)
                assert node.proc is not None
                node_rss = max(node_rss, rss_peak_mb(node.proc.pid))
            get_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        finally:
            if storescp is not None:
                storescp.terminate()
            node.stop()
            orthanc.stop()
    mb = sum(p.stat().st_size for p in study.files) / 1e6
    move_s, ref_move_s = statistics.median(times["move"]), statistics.median(times["ref_move"])
    get_s, ref_get_s = statistics.median(times["get"]), statistics.median(times["ref_get"])
    print(f"{args.size} study: {n_files} instances, {mb:.0f} MB, from Orthanc; the node retrieves "
          f"{args.associations} series at once; medians of {args.runs} run(s)")
    print(f"  C-FIND study + series   node {find_s:6.2f} s")
    print(f"  C-MOVE into the node    node {move_s:6.2f} s ({n_files / move_s:4.0f}/s)   movescu -> storescp "
          f"{ref_move_s:6.2f} s ({n_files / ref_move_s:4.0f}/s)   ratio {move_s / ref_move_s:.2f}   "
          f"node peak RSS {node_rss:.0f} MB")
    durable_s = statistics.median(times["ref_move_durable"])
    print(f"  C-MOVE, durable reference                          movescu -> Orthanc  {durable_s:6.2f} s "
          f"({n_files / durable_s:4.0f}/s)   ratio {move_s / durable_s:.2f}")
    print(f"  C-GET through ingest    node {get_s:6.2f} s ({n_files / get_s:4.0f}/s)   getscu              "
          f"{ref_get_s:6.2f} s ({n_files / ref_get_s:4.0f}/s)   ratio {get_s / ref_get_s:.2f}   "
          f"peak RSS of the C-GET process {get_rss:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
