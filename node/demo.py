"""`iodine-node demo`: the whole flow on this machine in under a minute, without a PACS.

A node on a free loopback port with a temporary storage root; a synthetic 124I study pushed to it
over DICOM; the quantify job; results delivered to a folder destination; the lesion table printed.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, PositronEmissionTomographyImageStorage

from node.config import parse_config
from node.ingest.listener import set_nodelay
from node.phantom import PhantomOptions, generate_phantom
from node.service import NodeService


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _push(files: list[Path], port: int, ae_title: str) -> int:
    def nodelay(event: evt.Event) -> None:
        set_nodelay(event.assoc.dul.socket.socket)

    ae = AE(ae_title="DEMO_SCANNER")
    ae.maximum_pdu_size = 131072
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(PositronEmissionTomographyImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
    if not assoc.is_established:
        raise RuntimeError("the demo node refused the association")
    ok = 0
    try:
        for f in files:
            status = assoc.send_c_store(str(f))
            ok += int(bool(status) and status.Status == 0)
    finally:
        assoc.release()
    return ok


def _wait_for_job(service: NodeService, count: int) -> Any:
    """The `count`-th finished job once its deliveries are out (or it failed), or None on timeout."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        jobs = sorted((j for j in service.index.jobs() if j.state in ("done", "failed")), key=lambda j: j.id)
        pending = service.index.query("SELECT COUNT(*) FROM outbox WHERE state='pending'")[0][0]
        if len(jobs) >= count and (jobs[count - 1].state == "failed" or not pending):
            return jobs[count - 1]
        time.sleep(0.3)
    return None


def _print_comparison(doc: dict[str, Any]) -> None:
    comparison = doc["comparison"]
    first, second = comparison["time_points"]
    print(f"\ncompared with the scan of {first['reference_datetime'][:10]} (TSH {first['tsh_uiu_per_ml']}) "
          f"-> {second['reference_datetime'][:10]} (TSH {second['tsh_uiu_per_ml']}); "
          f"registration: {comparison['registration']['method']}")
    print(f"  {'now':>3} {'prior':>5} {'site':<26} {'SUVmax 1':>8} {'SUVmax 2':>8} {'change':>7}  category")
    for r in comparison["lesions"]:
        change = r["relative_change_suv_max"]
        suv1, suv2 = r["suv_max"]
        print(f"  {r['current_id'] or '-':>3} {r['prior_id'] or '-':>5} {r['site'] or ''!s:<26} "
              f"{f'{suv1:.1f}' if suv1 is not None else '-':>8} {f'{suv2:.1f}' if suv2 is not None else '-':>8} "
              f"{f'{100 * change:+.0f} %' if change is not None else '-':>7}  {r['category']}")
    print(f"  summary: {comparison['summary']['categories']}; avid at the higher TSH: "
          f"{comparison['summary']['avid_at_higher_tsh']}")
    if comparison["summary"].get("direction"):
        print(f"  categories run {comparison['summary']['direction']}")
    for warning in comparison.get("warnings", []):
        print(f"  warning: {warning}")


def run_demo(workdir: Path | None = None, pair: bool = False) -> int:
    """One synthetic study; with `pair`, a second one of the same patient two weeks later at a
    higher TSH, so the comparison shows."""
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="iodine-node-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = parse_config({
        "node": {"ae_title": "IODINE_DEMO", "bind": "127.0.0.1", "port": port},
        "storage": {"root": str(root / "var")},
        "ingest": {"stable_after_s": 1, "force_after_s": 120, "poll_s": 0.2},
        "export": {"poll_s": 0.2, "retry": {"first_s": 0.5, "max_s": 2}},
        "destinations": [{"name": "demo-folder", "kind": "folder", "path": str(root / "delivered")}],
        "http": {"enabled": False},
    })
    started = time.perf_counter()
    print(f"1/4 generating a synthetic 124I PET/CT study in {root / 'study'}")
    study = generate_phantom(root / "study", PhantomOptions(seed=1))
    second = generate_phantom(root / "study2", PhantomOptions(seed=1, timepoint=2)) if pair else None
    service = NodeService(config)
    service.start()
    try:
        print(f"2/4 node listening on 127.0.0.1:{port} as IODINE_DEMO; pushing {len(study.files)} instances")
        stored = _push(study.files, port, "IODINE_DEMO")
        print(f"    {stored} instances acknowledged")
        print("3/4 waiting for the study to complete and the quantify job to run")
        job = _wait_for_job(service, 1)
        if second is not None and job is not None and job.state == "done":
            print(f"    then the same patient two weeks later (TSH 120): {len(second.files)} instances")
            _push(second.files, port, "IODINE_DEMO")
            job = _wait_for_job(service, 2)
        if job is None or job.state != "done":
            print(f"job did not finish: {job.error if job else 'timed out'}")
            return 1
        results_dir = service.root / job.result["results_dir"]
        doc = json.loads((results_dir / "results.json").read_text())
        print(f"4/4 job {job.id} done in {job.finished_at - job.started_at:.1f} s; "
              f"total {time.perf_counter() - started:.1f} s\n")
        print(f"  {'id':>3} {'label':<30} {'site':<26} {'SUVmax':>7} {'ml':>7} {'%IA':>8} {'LBR':>6} avid")
        for les in doc["lesions"]:
            ia = les["percent_injected_activity"]
            print(f"  {les['id']:>3} {les['label']:<30} {les['site']:<26} {les['suv_max']:>7.2f} "
                  f"{les['volume_ml']:>7.2f} {ia if ia is not None else 0:>8.4f} {les['lesion_to_background']:>6.1f} "
                  f"{'yes' if les['iodine_avid'] else 'no'}")
        if "comparison" in doc:
            _print_comparison(doc)
        print(f"\nresults: {results_dir}")
        for f in sorted(results_dir.iterdir()):
            print(f"  {f.name}")
        delivered = sorted((root / "delivered").rglob("*.dcm"))
        print(f"delivered to the folder destination: {len(delivered)} objects in {root / 'delivered'}")
        return 0
    finally:
        service.stop()
