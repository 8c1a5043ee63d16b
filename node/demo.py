"""`iodine-node demo`: the whole flow on this machine in under a minute, without a PACS.

A node on a free loopback port with a temporary storage root; a synthetic 124I study pushed to it
over DICOM; the quantify job; results delivered to a folder destination; the lesion table printed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pynetdicom import AE, Association, evt
from pynetdicom.sop_class import CTImageStorage, PositronEmissionTomographyImageStorage, Verification

from node.config import parse_config
from node.net.sockets import set_nodelay
from node.phantom import PhantomOptions, generate_phantom
from node.service import NodeService
from node.store import DeliveryState, JobState

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21): result 1 permanent, 2 transient; source 1 = service user,
# 2 = service provider (ACSE), 3 = service provider (presentation).
_REJECT_REASONS = {(1, 1): "no reason given", (1, 2): "application context name not supported",
                   (1, 3): "calling AE title not recognised", (1, 7): "called AE title not recognised",
                   (2, 1): "no reason given", (2, 2): "protocol version not supported",
                   (3, 1): "temporary congestion", (3, 2): "local limit exceeded (too many associations)"}
FAULT_BUSY_ENV = "IODINE_NODE_FAULT_DEMO_BUSY"  # tests: the demo's node is saturated by another scanner


class PushError(RuntimeError):
    """The study could not be sent; the message is one line for the user."""


def _refusal(assoc: Association, where: str, connected: bool) -> tuple[bool, str]:
    """(permanent, what happened) for an association that was not established."""
    if not connected:
        return False, f"no association with {where} (connection refused or unreachable)"
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        result, source, reason = (getattr(rsp, name, None) for name in ("result", "result_source", "diagnostic"))
        text = _REJECT_REASONS.get((source, reason), f"source {source} reason {reason}")
        return result == 1, f"{where} rejected the association ({'permanent' if result == 1 else 'transient'}: {text})"
    if assoc.is_aborted:
        return False, f"{where} aborted the association request"
    return False, f"no association with {where} (no answer in time)"


def push_files(files: list[Path], host: str, port: int, called_ae: str, calling_ae: str = "DEMO_SCANNER",
               attempts: int = 4, first_backoff_s: float = 1.0, timeout_s: float = 120.0) -> int:
    """C-STORE every file; returns how many were acknowledged with success (the others with a warning).

    A busy node may reject an association (transient A-ASSOCIATE-RJ) or abort it mid-transfer: the
    files not yet answered are sent again on a new association after a backoff that doubles, up to
    `attempts` tries in a row without progress. Then, or at once for a permanent rejection, PushError
    says in one line what happened; also when the node answered any instance with a failure status.
    """
    connected: list[bool] = []

    def nodelay(event: evt.Event) -> None:
        connected.append(True)
        set_nodelay(event.assoc.dul.socket.socket)

    ae = AE(ae_title=calling_ae)
    ae.maximum_pdu_size = 131072
    # pynetdicom's default DIMSE timeout (30 s) aborts on a loaded machine; the node allows 120 s.
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(PositronEmissionTomographyImageStorage)
    where = f"{called_ae}@{host}:{port}"
    pending = list(files)
    stored = failures = 0
    refused: list[str] = []  # answered with a failure status: sending again would not help
    while pending:
        problem = ""
        connected.clear()
        try:
            assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        except OSError as exc:
            raise PushError(f"cannot connect to {where}: {exc}") from exc
        if not assoc.is_established:
            permanent, problem = _refusal(assoc, where, bool(connected))
            if permanent:
                raise PushError(problem)
        else:
            sent_before = len(pending)
            try:
                while pending and assoc.is_established:
                    status = assoc.send_c_store(str(pending[0]))
                    if not status:  # no response: the association was aborted or timed out
                        break
                    if status.Status == 0x0000:
                        stored += 1
                    elif status.Status not in (0xB000, 0xB006, 0xB007):  # PS3.4 B.2.3: warnings are stored
                        refused.append(f"0x{status.Status:04X} {status.get('ErrorComment', '')}".strip())
                    pending.pop(0)
            finally:
                if assoc.is_established:
                    assoc.release()
            if pending:
                problem = (f"the association with {where} ended after {sent_before - len(pending)} of "
                           f"{sent_before} instances (aborted, or no response within {timeout_s:g} s)")
            if len(pending) < sent_before:
                failures = 0  # progress: the count of tries in a row starts again
        if pending:
            failures += 1
            if failures >= attempts:
                raise PushError(f"{problem}; gave up after {attempts} attempts, {len(files) - len(pending)} of "
                                f"{len(files)} instances sent")
            log.warning("%s; trying again in %g s", problem, first_backoff_s * 2 ** (failures - 1))
            time.sleep(first_backoff_s * 2 ** (failures - 1))
    if refused:
        raise PushError(f"{where} refused {len(refused)} of {len(files)} instances (first: status {refused[0]})")
    return stored


@contextlib.contextmanager
def _busy_scanner(port: int, ae_title: str) -> Iterator[None]:
    """Another scanner holding the node's only association open (FAULT_BUSY_ENV)."""
    ae = AE(ae_title="BUSY_SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        raise PushError(f"the busy-node fault could not occupy 127.0.0.1:{port}")
    try:
        yield
    finally:
        assoc.release()


def _wait_for_job(service: NodeService, count: int) -> Any:
    """The `count`-th finished job once its deliveries are out (or it failed), or None on timeout."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        jobs = sorted((j for j in service.store.jobs.recent() if j.state in (JobState.DONE, JobState.FAILED)),
                      key=lambda j: j.id)
        pending = service.store.outbox.counts()[DeliveryState.PENDING]
        if len(jobs) >= count and (jobs[count - 1].state == JobState.FAILED or not pending):
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
    busy = os.environ.get(FAULT_BUSY_ENV, "") == "1"
    if logging.getLogger().level > logging.DEBUG:  # the outcome is said in one line below, not in pynetdicom's
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    config = parse_config({
        # One listener process: the demo's node lives inside this command (and its busy-scanner
        # fault needs the one association limit of one process).
        "node": {"ae_title": "IODINE_DEMO", "bind": "127.0.0.1", "port": port, "listener_processes": 1,
                 **({"max_associations": 1} if busy else {})},
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
        with _busy_scanner(port, "IODINE_DEMO") if busy else contextlib.nullcontext():
            return _run(service, port, study, second, root, started)
    except PushError as exc:
        print(f"iodine-node demo: could not send the study: {exc}", file=sys.stderr)
        return 1
    finally:
        service.stop()


def _run(service: NodeService, port: int, study: Any, second: Any, root: Path, started: float) -> int:
    """Push, wait for the job(s), print the results: the demo once its node is up."""
    print(f"2/4 node listening on 127.0.0.1:{port} as IODINE_DEMO; pushing {len(study.files)} instances")
    stored = push_files(study.files, "127.0.0.1", port, "IODINE_DEMO")
    print(f"    {stored} instances acknowledged")
    print("3/4 waiting for the study to complete and the quantify job to run")
    job = _wait_for_job(service, 1)
    if second is not None and job is not None and job.state == JobState.DONE:
        print(f"    then the same patient two weeks later (TSH 120): {len(second.files)} instances")
        push_files(second.files, "127.0.0.1", port, "IODINE_DEMO")
        job = _wait_for_job(service, 2)
    if job is None or job.state != JobState.DONE:
        print(f"iodine-node demo: the job did not finish: {job.error if job else 'timed out after 180 s'}",
              file=sys.stderr)
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
