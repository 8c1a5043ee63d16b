"""The DICOM front door: a pynetdicom C-ECHO and C-STORE SCP.

Each C-STORE is streamed into a temporary file inside this listener's spool by its own DIMSE
provider (node.ingest.dimse_guard; never held whole in memory, no process-wide library setting),
then fsynced, linked into place and indexed before the handler returns 0x0000. Several listener
processes can share the port (reuse_port; node.ingest.pool). Anything
that fails answers a failure status so the sender retries; the association goes on.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import AE, Association, evt
from pynetdicom.sop_class import Verification

from node.config import NodeConfig
from node.ingest.guard import GuardedServer, GuardSettings, Refusals, compact_library_logs
from node.ingest.ingestor import OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, IngestError, Ingestor
from node.ingest.sop_classes import ACCEPTED_SOP_CLASSES, TRANSFER_SYNTAXES, all_storage_sop_classes
from node.ingest.spool import ReceiveFile
from node.metrics import Metrics
from node.net.assoc import tune_association

log = logging.getLogger(__name__)

# A value no AE title can take (PS3.5 6.2 forbids backslash): makes a whitelist refuse everyone.
_NOBODY = "\\"


class AuditSink(Protocol):
    """node.audit.AuditLog, or a listener process's relay to the service's audit log."""

    def event(self, event: str, outcome: str = "success", **fields: Any) -> None: ...


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]  # (0000,0902) LO: 64 characters at most
    return ds


class _NodeAE(AE):
    """An AE whose calling-AE whitelist also checks the peer's host.

    pynetdicom checks `require_calling_aet` in the association's own thread while negotiating,
    so the peer's address is that of the current thread's Association.
    """

    def __init__(self, ae_title: str, allowed: list[tuple[str, str | None]]) -> None:
        super().__init__(ae_title=ae_title)
        self._allowed = allowed

    @property  # type: ignore[override]
    def require_calling_aet(self) -> list[str]:
        if not self._allowed:
            return []
        assoc = threading.current_thread()
        host = assoc.requestor.address if isinstance(assoc, Association) else None
        titles = [title for title, allowed_host in self._allowed if allowed_host in (None, host)]
        return titles or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, value: list[str]) -> None:
        self._allowed = [(v, None) for v in value]


def _tls_context(config: NodeConfig) -> ssl.SSLContext | None:
    tls = config.node.tls
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # BCP 195 (PS3.15 B.9)
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca:
        ctx.load_verify_locations(str(tls.ca))
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return ctx


class Listener:
    def __init__(self, config: NodeConfig, ingestor: Ingestor, spool_tmp: Path, metrics: Metrics | None = None,
                 audit: AuditSink | None = None, reuse_port: bool = False) -> None:
        self.config = config
        self.reuse_port = reuse_port
        self.ingestor = ingestor
        self.metrics = metrics
        self.audit = audit
        # C-STORE data sets stream into the spool (same disk: linked into place), through this
        # listener's own DIMSE provider; disk errors while receiving answer 0xA700 (ReceiveFile).
        self.spool_tmp = spool_tmp
        allowed = [(c.ae_title, c.host) for c in config.ingest.allowed_callers]
        ae = _NodeAE(config.node.ae_title, allowed)
        ae.require_called_aet = True
        ae.maximum_associations = config.node.max_associations
        limits = config.node.limits
        max_instance = int(config.ingest.max_instance_mb * 1e6)
        self.guard = GuardSettings(
            artim_s=limits.artim_timeout_s, network_timeout_s=limits.network_timeout_s,
            max_per_host=limits.max_connections_per_host, max_pending=limits.max_pending_connections,
            max_rq_bytes=limits.max_associate_rq_kb * 1024, max_pdu_bytes=limits.max_pdu_kb * 1024,
            # An instance over ingest.max_instance_mb is received and answered 0xA700 (the sender
            # learns why); one streaming on past twice that is cut off (A-ABORT) to protect the disk.
            max_dataset_bytes=2 * max_instance + (1 << 20))
        self.refusals = Refusals(metrics.refused if metrics else None)
        # The Maximum Length the node announces (PS3.8 D.1): the guard aborts longer P-DATA PDUs.
        ae.maximum_pdu_size = self.guard.max_pdu_bytes
        ae.network_timeout = limits.network_timeout_s
        ae.acse_timeout = limits.artim_timeout_s
        ae.dimse_timeout = 120
        ae.add_supported_context(Verification)
        for uid in all_storage_sop_classes():
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        self.ae = ae
        self._server: GuardedServer | None = None
        self._thread = threading.Thread()

    def start(self) -> None:
        handlers = [
            (evt.EVT_CONN_OPEN, self._on_connect),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        address = (self.config.node.bind, self.config.node.port)
        compact_library_logs()
        server = self.ae.make_server(address, evt_handlers=handlers, ssl_context=_tls_context(self.config),
                                     server_class=GuardedServer, guard=self.guard, refusals=self.refusals,
                                     receive_dir=self.spool_tmp, store=self.store, reuse_port=self.reuse_port)
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
        self._thread.start()
        self.ae._servers.append(server)  # noqa: SLF001 - as AE.start_server does, so shutdown() finds it
        self._server = server
        log.info("listening on %s:%d as %s%s", *address, self.config.node.ae_title,
                 " (TLS)" if self.config.node.tls else "")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def status(self) -> dict[str, object]:
        """For /healthz, without connecting (a probe must not take a slot): the accept loop is
        alive and turning (it ticks at least every 0.5 s), with the connections it holds."""
        server = self._server
        if server is None or not self._thread.is_alive():
            return {"ok": False, "error": "the DICOM listener is not running"}
        idle_s = time.monotonic() - server.heartbeat
        report: dict[str, object] = {
            "ok": idle_s < 10.0, "associations": len(server.active_associations),
            "max_associations": self.config.node.max_associations, "negotiating": server.pending_count(),
            "refused": self.refusals.snapshot()}
        if idle_s >= 10.0:
            report["error"] = f"the accept loop has not turned for {idle_s:.0f} s"
        return report

    # -- event handlers -------------------------------------------------------------------

    @staticmethod
    def _on_connect(event: evt.Event) -> None:
        tune_association(event.assoc)

    def _on_accepted(self, event: evt.Event) -> None:
        r = event.assoc.requestor
        log.info("association accepted from %s at %s:%s", r.ae_title, r.address, r.port)
        if self.metrics:
            self.metrics.inc("iodine_associations_accepted_total")
        if self.audit:
            self.audit.event("association-accepted", calling_ae=r.ae_title, peer=r.address,
                             called_ae=self.config.node.ae_title)

    def _on_rejected(self, event: evt.Event) -> None:
        r = event.assoc.requestor
        called = str(getattr(event.assoc.requestor.primitive, "called_ae_title", "") or "")
        log.warning("association rejected: calling AE %r at %s, called AE %r (not allowed by node.ae_title "
                    "or ingest.allowed_callers)", r.ae_title, r.address, called)
        if self.metrics:
            self.metrics.inc("iodine_associations_rejected_total")
        if self.audit:
            self.audit.event("association-rejected", outcome="failure", calling_ae=r.ae_title, peer=r.address,
                             called_ae=called)

    @staticmethod
    def _on_close(event: evt.Event) -> None:
        removed = ReceiveFile.discard_open(event.assoc.dul)
        if removed:
            log.warning("association from %s ended during a C-STORE: %d partial file(s) removed",
                        event.assoc.requestor.ae_title, removed)

    @staticmethod
    def _on_echo(event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> int | Dataset:
        """pynetdicom's EVT_C_STORE handler, for the C-STOREs the DIMSE provider does not answer
        itself (node.ingest.dimse_guard)."""
        status, comment = self.store(Path(event.dataset_path), str(event.request.AffectedSOPClassUID or ""),
                                     str(event.request.AffectedSOPInstanceUID or ""), event.assoc)
        return _status(status, comment) if comment else status

    def store(self, path: Path, sop_class: str, sop_uid: str, assoc: Association) -> tuple[int, str]:
        """Ingest one received data set file: (C-STORE status, error comment) for the answer."""
        r = assoc.requestor
        if sop_class not in ACCEPTED_SOP_CLASSES:
            log.warning("refused instance %s from %s: SOP Class %s not stored by this node", sop_uid[:64],
                        r.ae_title, sop_class)
            return SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class} not supported"
        try:
            outcome = self.ingestor.ingest(path, source="dicom", calling_ae=r.ae_title,
                                           context_sop_class=sop_class, affected_sop_uid=sop_uid)
        except IngestError as exc:
            log.warning("refused instance %s from %s at %s: %s (status 0x%04X)", sop_uid[:64], r.ae_title,
                        r.address, exc.reason, exc.status)
            if self.metrics:
                self.metrics.inc("iodine_instances_refused_total")
            return exc.status, exc.reason
        except Exception as exc:
            log.exception("could not store instance %s from %s", sop_uid[:64], r.ae_title)
            return OUT_OF_RESOURCES, f"not stored: {type(exc).__name__}: {exc}"
        if not outcome.stored:
            log.debug("duplicate instance %s from %s: already stored", sop_uid, r.ae_title)
        return 0x0000, ""
