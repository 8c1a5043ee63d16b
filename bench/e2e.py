"""End to end: storescu pushes a whole-body phantom to the node; results land in Orthanc.

Prints the seconds from the last instance acknowledged to the last result stored in Orthanc, minus
the configured stable window (target <= 10 s), and the export rate of the node's C-STORE sender
against storescu sending the same files to Orthanc in the same run.
Usage: python -m bench.e2e [--size wholebody] [--stable-s 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import OUT, phantom  # noqa: E402
from node.config import parse_config  # noqa: E402
from node.export.base import Parcel  # noqa: E402
from node.export.dicom import DicomTarget  # noqa: E402
from tests.peers import PEER_ENV, NodeProcess, Orthanc, wait_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="wholebody", choices=("small", "wholebody"))
    parser.add_argument("--stable-s", type=float, default=2.0)
    args = parser.parse_args()
    study = phantom(args.size)
    uid = study.truth["study_instance_uid"]
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        node = NodeProcess(work / "node", {"ingest": {"stable_after_s": args.stable_s, "force_after_s": 600,
                                                      "poll_s": 0.2}})
        orthanc = Orthanc(work / "orthanc", modalities={"node": [node.ae_title, "127.0.0.1", node.port],
                                                        "bench": ["BENCH", "127.0.0.1", 1]})
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["destinations"] = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                                "port": orthanc.dicom_port}]
        cfg["export"] = {"poll_s": 0.1, "retry": {"first_s": 0.5, "max_s": 2}}
        node.config_path.write_text(yaml.safe_dump(cfg))
        orthanc.start()
        node.start()
        try:
            t0 = time.perf_counter()
            push = subprocess.run(["storescu", "-aec", node.ae_title, "+sd", "+r", "127.0.0.1", str(node.port),
                                   str(study.out_dir / "PT"), str(study.out_dir / "CT")], env=PEER_ENV,
                                  capture_output=True, text=True, check=True)
            acked = time.perf_counter()

            def arrived() -> bool:
                return all(orthanc.post("/tools/find", {"Level": "Series",
                                                        "Query": {"StudyInstanceUID": uid, "Modality": m}})
                           for m in ("SEG", "SR", "OT"))

            wait_for(arrived, 300, "results in Orthanc", interval=0.1)
            done = time.perf_counter()
            job = node.jobs()[-1]
            seconds = json.loads(job["result"])["series"][0]["seconds"]
        finally:
            node.stop()
        latency = done - acked - args.stable_s
        print(f"{args.size}: {len(study.files)} instances pushed in {acked - t0:.2f} s ({push.returncode=})")
        print(f"last ack -> last result in Orthanc: {done - acked:.2f} s; minus stable window {args.stable_s:g} s: "
              f"{latency:.2f} s (target <= 10 s); job stages {seconds}")

        # Export rate: the node's sender vs storescu, same files, same Orthanc, one association each.
        config = parse_config({"node": {"ae_title": "BENCH"}})
        target = DicomTarget(parse_config({"destinations": [{"name": "p", "ae_title": orthanc.aet,
                                                             "host": "127.0.0.1",
                                                             "port": orthanc.dicom_port}]}).destinations[0], config)
        parcels = [Parcel(i, f, "", "", uid) for i, f in enumerate(study.files)]
        t = time.perf_counter()
        outcomes = target.send(parcels)
        node_s = time.perf_counter() - t
        ok = sum(o.state == "delivered" for o in outcomes.values())
        t = time.perf_counter()
        subprocess.run(["storescu", "-aet", "BENCH", "-aec", orthanc.aet, "+sd", "+r", "127.0.0.1",
                        str(orthanc.dicom_port), str(study.out_dir / "PT"), str(study.out_dir / "CT")],
                       env=PEER_ENV, capture_output=True, check=True)
        dcmtk_s = time.perf_counter() - t
        orthanc.stop()
        n = len(study.files)
        print(f"export of {n} instances to Orthanc: node sender {node_s:.2f} s ({n / node_s:.0f}/s, {ok} ok), "
              f"storescu {dcmtk_s:.2f} s ({n / dcmtk_s:.0f}/s): ratio {node_s / dcmtk_s:.2f}")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "e2e.json").write_text(json.dumps({"latency_s": latency, "stable_s": args.stable_s,
                                                  "export_node_s": node_s, "export_storescu_s": dcmtk_s,
                                                  "instances": n, "job_seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
