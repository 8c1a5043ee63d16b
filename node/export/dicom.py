"""DICOM C-STORE destination: one association per batch, only the SOP classes it sends.

Statuses (PS3.4 B.2.3): 0x0000 delivered; 0xB000/0xB006/0xB007 delivered with a warning; 0xA7xx
(out of resources) retried; other failures are answers about the object itself and go to dead
letter. An association rejected permanently (calling/called AE not recognised) or a presentation
context refused (SOP class not supported) cannot be cured by retrying: dead letter at once.
Connection errors and transient rejections are retried.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pynetdicom import _config, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.pdu_primitives import A_ASSOCIATE

from node.export.base import DEAD, DELIVERED, RETRY, Outcome, Parcel, Report, no_report, register
from node.net.assoc import SCU_MAX_PDU_BYTES, tune_association
from node.net.reactor import EventAE, rejection_of

WARNING_STATUSES = {0xB000, 0xB006, 0xB007}
# A-ASSOCIATE-RJ (PS3.8 9.3.4): result 1 = rejected-permanent; source 1 reasons 3 and 7 are the AE titles.
_AE_REASONS = {2: "application context name not supported", 3: "calling AE title not recognised",
               7: "called AE title not recognised"}


def _on_open(event: evt.Event, opened: list[bool]) -> None:
    opened.append(True)
    tune_association(event.assoc)


@register("dicom")
class DicomTarget:
    def __init__(self, destination: Any, node_config: Any) -> None:
        self.d = destination
        self.calling = destination.calling_ae_title or node_config.node.ae_title

    def _tls(self) -> tuple[ssl.SSLContext, str] | None:
        if self.d.tls is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.d.tls.ca) if self.d.tls.ca else None)
        ctx.check_hostname = False  # DICOM peers are addressed by IP; the CA pins who they are
        if self.d.tls.cert and self.d.tls.key:
            ctx.load_cert_chain(str(self.d.tls.cert), str(self.d.tls.key))
        return ctx, ""

    def send(self, parcels: Sequence[Parcel], report: Report = no_report) -> dict[int, Outcome]:
        headers: dict[int, Any] = {}
        for p in parcels:
            try:  # the file meta (PS3.10 7.1) names SOP class and transfer syntax: the data set is not parsed
                meta = split_dataset(p.path)[0]
                headers[p.item_id] = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
            except Exception as exc:  # noqa: BLE001 - a result file that cannot be read cannot be sent
                headers[p.item_id] = exc
        # Missing or unreadable: retried (a file being restored, a disk back online); after
        # export.retry.give_up_after_h it becomes a dead letter like any failure.
        out: dict[int, Outcome] = {i: Outcome(RETRY, f"result file missing or unreadable: {h}")
                                   for i, h in headers.items() if isinstance(h, Exception)}
        todo = [p for p in parcels if p.item_id not in out]
        if not todo:
            return out
        # Send each file's encoded dataset as it is, in chunks: no decode and re-encode, little memory.
        _config.STORE_SEND_CHUNKED_DATASET = True
        # C-STORE is one operation at a time on an association (pynetdicom, dcmtk and Orthanc do not
        # negotiate asynchronous operations, PS3.7 D.3.3.3): a large batch goes over `associations`
        # associations at once, each object on exactly one of them.
        lanes = max(1, min(int(getattr(self.d, "associations", 1) or 1), len(todo) // 8))
        if lanes == 1:
            return {**out, **self._send_on_one(todo, headers, report)}
        with ThreadPoolExecutor(lanes, thread_name_prefix="dicom-export") as pool:
            for result in pool.map(lambda share: self._send_on_one(share, headers, report),
                                   [todo[i::lanes] for i in range(lanes)]):
                out.update(result)
        return out

    def _send_on_one(self, todo: Sequence[Parcel], headers: dict[int, Any], report: Report) -> dict[int, Outcome]:
        """Send `todo` over one association; an outcome for each."""
        out: dict[int, Outcome] = {}
        ae = EventAE(ae_title=self.calling)
        # What we announce bounds only what the peer sends us (C-STORE-RSPs); our P-DATA follow the
        # peer's announced maximum (PS3.8 D.1).
        ae.maximum_pdu_size = SCU_MAX_PDU_BYTES
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        contexts = sorted({headers[p.item_id] for p in todo})
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, syntax)
        opened: list[bool] = []
        try:
            assoc = ae.associate(self.d.host, self.d.port, ae_title=self.d.ae_title, tls_args=self._tls(),
                                 evt_handlers=[(evt.EVT_CONN_OPEN, _on_open, [opened])])
        except (OSError, ssl.SSLError) as exc:
            return {**out, **{p.item_id: Outcome(RETRY, f"cannot connect to {self.d.host}:{self.d.port}: {exc}")
                              for p in todo}}
        if not assoc.is_established:
            outcome = (self._refusal(assoc) if opened else
                       Outcome(RETRY, f"cannot connect to {self.d.host}:{self.d.port} (refused or unreachable)"))
            return {**out, **{p.item_id: outcome for p in todo}}
        try:
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            for p in todo:
                sop_class = headers[p.item_id][0]
                if sop_class not in accepted:
                    out[p.item_id] = Outcome(DEAD, f"{self.d.ae_title} does not accept SOP class {sop_class} "
                                                   "(presentation context rejected)")
                    continue
                if not assoc.is_established:
                    out[p.item_id] = Outcome(RETRY, "association ended before this object was sent")
                    continue
                try:
                    status = assoc.send_c_store(str(p.path))
                except (OSError, RuntimeError, ValueError) as exc:
                    out[p.item_id] = Outcome(RETRY, f"C-STORE failed: {exc}")
                    continue
                out[p.item_id] = self._status(status)
                report(p.item_id, out[p.item_id])  # recorded before the next object is sent
        finally:
            if assoc.is_established:
                assoc.release()
        return out

    def _refusal(self, assoc: Any) -> Outcome:
        where = f"{self.d.ae_title}@{self.d.host}:{self.d.port}"
        rsp = rejection_of(assoc)
        if assoc.is_rejected or rsp is not None:
            result = getattr(rsp, "result", None) if isinstance(rsp, A_ASSOCIATE) else None
            source = getattr(rsp, "result_source", None)
            reason = getattr(rsp, "diagnostic", None)
            text = _AE_REASONS.get(reason, f"reason {reason}") if source == 1 else f"source {source} reason {reason}"
            if result == 1:
                return Outcome(DEAD, f"association rejected permanently by {where}: {text} (calling AE "
                                     f"{self.calling!r}, called AE {self.d.ae_title!r})")
            return Outcome(RETRY, f"association rejected transiently by {where}: {text}")
        if assoc.is_aborted:
            return Outcome(RETRY, f"association aborted by {where}")
        return Outcome(RETRY, f"no association with {where} (connection refused or timed out)")

    @staticmethod
    def _status(status: Any) -> Outcome:
        if not status or "Status" not in status:
            return Outcome(RETRY, "no C-STORE response (connection lost or timed out)")
        code = int(status.Status)
        comment = str(status.get("ErrorComment", "") or "")
        if code == 0x0000:
            return Outcome(DELIVERED)
        if code in WARNING_STATUSES:
            return Outcome(DELIVERED, warning=f"status 0x{code:04X} {comment}".strip())
        if 0xA700 <= code <= 0xA7FF:
            return Outcome(RETRY, f"peer out of resources (0x{code:04X}) {comment}".strip())
        return Outcome(DEAD, f"refused with status 0x{code:04X} {comment}".strip())


