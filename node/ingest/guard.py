"""The DICOM listener's guard against broken and hostile peers (docs/security.md).

pynetdicom's server hands every accepted socket straight to an Association, which counts against
`max_associations` at once, reads a PDU of whatever length its 6-byte header declares, and (with
TLS) shakes hands inside the accept loop without a timeout. This module puts a guard in front:

* the accept loop only accepts; a per-host cap and a cap on connections still negotiating are
  checked there, so a flood costs no thread;
* each connection's own thread does the TLS handshake and reads the whole A-ASSOCIATE-RQ under
  one deadline (the ARTIM timer, PS3.8 9.1.5), refusing a wrong first PDU or one longer than
  `max_associate_rq_kb` before reading its body; only then is it handed to pynetdicom (the bytes
  already read are replayed), so it counts as an association only once it has asked for one;
* on an association, every PDU header is checked before its body is read (P-DATA no longer than
  the Maximum Length the node announced, PS3.8 D.1; other PDUs within the A-ASSOCIATE-RQ cap),
  and each DIMSE message's size is capped (a C-STORE data set at the instance limit, anything
  else at the small cap) while it streams in; every read has a timeout.
A violation ends the connection with an A-ABORT (source: service provider, PS3.8 9.3.8) where the
protocol allows and one log line naming the peer and the reason.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.ingest.dimse_guard import GuardedDIMSE, StoreHandler
from node.ingest.guard_log import Refusals, compact_library_logs, quiet
from node.net.handlers import drop_unlogged_handlers
from node.net.reactor import EventAssociation
from node.net.sockets import set_nodelay, set_reuseport
from node.net.wire import (
    A_ASSOCIATE_RQ,
    ABORT_INVALID_PARAMETER,
    ABORT_UNEXPECTED_PDU,
    C_STORE_RQ,
    KNOWN_PDU_TYPES,
    P_DATA,
    abort_and_shutdown,
    command_field,
    recv_exact,
)

__all__ = ["GuardSettings", "GuardedServer", "Refusals", "compact_library_logs"]

log = logging.getLogger(__name__)

# Some implementations count the 6-byte PDV item header outside the announced maximum: allow it.
_PDU_SLACK = 16
_command_field = command_field  # the name the unit tests use

@dataclass(frozen=True)
class GuardSettings:
    artim_s: float = 20.0
    network_timeout_s: float = 120.0
    max_per_host: int = 16
    max_pending: int = 64
    max_rq_bytes: int = 64 * 1024
    max_pdu_bytes: int = 1024 * 1024
    max_dataset_bytes: int = 2 * 1024**3


# -- connections not yet associated ----------------------------------------------------------

@dataclass(eq=False)
class _Pending:
    host: str
    sock: socket.socket
    started: float = field(default_factory=time.monotonic)
    evicted: bool = False


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the guard: accept only in the loop, caps, pre-reading."""

    guard: GuardSettings
    refusals: Refusals

    def __init__(self, *args: Any, guard: GuardSettings, refusals: Refusals, receive_dir: Path | None = None,
                 store: StoreHandler | None = None, reuse_port: bool = False, **kwargs: Any) -> None:
        self.guard = guard
        self.refusals = refusals
        self.receive_dir = receive_dir  # where C-STORE data sets stream to (node.ingest.dimse_guard)
        self.store = store  # the listener's store, called by the DIMSE provider (node.ingest.dimse_guard)
        self.reuse_port = reuse_port  # several listener processes on one port (node.ingest.pool)
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self.heartbeat = time.monotonic()
        super().__init__(*args, request_handler=GuardedHandler, **kwargs)
        self.daemon_threads = True

    def server_bind(self) -> None:
        if self.reuse_port and self.socket is not None:
            set_reuseport(self.socket)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept, nothing more: the TLS handshake happens in the connection's own thread."""
        assert self.socket is not None
        client, address = self.socket.accept()
        set_nodelay(client)
        return client, address

    def _associations_from(self, host: str) -> int:
        return sum(1 for a in self.active_associations if a.requestor.address == host)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = client_address[0]
        with self._lock:
            live = [p for p in self._pending.values() if not p.evicted]
            from_host = sum(1 for p in live if p.host == host)
            victim = min(live, key=lambda p: p.started) if len(live) >= self.guard.max_pending else None
        from_host += self._associations_from(host)
        if from_host >= self.guard.max_per_host:
            self.refusals.note("per-host-cap", client_address, f"{from_host} connections from this host already "
                               f"open (node.limits.max_connections_per_host = {self.guard.max_per_host})")
            return False
        if victim is not None:  # make room: the oldest connection that has not associated yet goes
            victim.evicted = True
            with contextlib.suppress(OSError):
                victim.sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._pending[id(request)] = _Pending(host, request)
        return True

    def pending_entry(self, request: Any) -> _Pending | None:
        with self._lock:
            return self._pending.get(id(request))

    def release_pending(self, request: Any) -> None:
        with self._lock:
            self._pending.pop(id(request), None)

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def service_actions(self) -> None:
        super().service_actions()
        self.heartbeat = time.monotonic()  # the accept loop is turning (read by /healthz)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection from %s:%s ended by an error in its handler", *client_address[:2], exc_info=False)


class _Refused(Exception):
    def __init__(self, kind: str, reason: str, abort: int | None = None, level: int = logging.WARNING) -> None:
        super().__init__(reason)
        self.kind, self.reason, self.abort, self.level = kind, reason, abort, level


class GuardedHandler(RequestHandler):
    """Reads the A-ASSOCIATE-RQ under the ARTIM deadline in the connection's own thread, then
    hands the connection to pynetdicom."""

    server: GuardedServer

    def handle(self) -> None:
        server, raw = self.server, self.request
        try:
            sock, prefix = self._negotiate(server.pending_entry(raw))
        except _Refused as refusal:
            server.refusals.note(refusal.kind, self.client_address, refusal.reason, refusal.level)
            self._close(self.request, refusal.abort)
            return
        finally:
            server.release_pending(raw)
        self.request = sock
        sock.settimeout(server.guard.network_timeout_s)
        assoc = self._create_association(prefix)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()

    def _negotiate(self, entry: _Pending | None) -> tuple[socket.socket, bytes]:
        g = self.server.guard
        deadline = time.monotonic() + g.artim_s
        sock = self.request
        try:
            if self.server.ssl_context is not None:
                sock.settimeout(g.artim_s)
                sock = self.server.ssl_context.wrap_socket(sock, server_side=True)
                self.request = sock
                if entry is not None:
                    entry.sock = sock
            header = recv_exact(sock, 6, deadline)
            if len(header) < 6:
                if entry is not None and entry.evicted:
                    raise _Refused("evicted", "dropped to make room (node.limits.max_pending_connections)")
                # A bare connect and close (a port probe) is not worth a warning.
                raise _Refused("closed-early", f"closed after {len(header)} bytes, before an A-ASSOCIATE-RQ header",
                               level=logging.WARNING if header else logging.DEBUG)
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type != A_ASSOCIATE_RQ:
                raise _Refused("unexpected-pdu", f"first PDU is of type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ "
                                                 "(PS3.8 9.3.2)", ABORT_UNEXPECTED_PDU)
            if length > g.max_rq_bytes:
                raise _Refused("associate-rq-too-large", f"A-ASSOCIATE-RQ declares {length} bytes, more than "
                               f"node.limits.max_associate_rq_kb ({g.max_rq_bytes // 1024} KiB)",
                               ABORT_INVALID_PARAMETER)
            body = recv_exact(sock, length, deadline)
            if len(body) < length:
                raise _Refused("closed-early", f"closed after {len(body)} of {length} A-ASSOCIATE-RQ bytes")
        except TimeoutError:
            what = "TLS handshake and A-ASSOCIATE-RQ" if self.server.ssl_context else "A-ASSOCIATE-RQ"
            raise _Refused("artim-timeout", f"no complete {what} within node.limits.artim_timeout_s "
                                            f"({g.artim_s:g} s)") from None
        except ssl.SSLError as exc:
            raise _Refused("tls-handshake", f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            if entry is not None and entry.evicted:
                raise _Refused("evicted", "dropped to make room (node.limits.max_pending_connections)") from None
            raise _Refused("connection-error", f"{type(exc).__name__}: {exc}") from None
        return sock, header + body

    @staticmethod
    def _close(sock: socket.socket, abort: int | None) -> None:
        abort_and_shutdown(sock, abort)
        with contextlib.suppress(OSError, ValueError):
            sock.close()

    def _create_association(self, prefix: bytes = b"") -> Association:  # type: ignore[override]
        """As pynetdicom's RequestHandler._create_association, with the guarded socket and DIMSE."""
        assoc = EventAssociation.adopt(Association(self.ae, MODE_ACCEPTOR), GuardedDIMSE)
        assoc._server = self.server  # noqa: SLF001 - pynetdicom's own wiring
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assert isinstance(assoc.dimse, GuardedDIMSE)
        assoc.dimse.receive_dir = self.server.receive_dir
        assoc.dimse.store = self.server.store if self.server.receive_dir is not None else None
        assoc.set_socket(GuardedSocket(assoc, self.request, prefix, self.server.guard, self.server.refusals,
                                       self.client_address))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # A new list of the server's contexts, not pynetdicom's deepcopy of ~170 of them (57 ms of CPU
        # per association here): negotiation only reads the acceptor's contexts
        # (pynetdicom.presentation.negotiate_as_acceptor builds new result contexts).
        assoc.acceptor.supported_contexts = list(self.server.contexts)
        assoc.requestor.address_info = self.remote
        handlers = self.server._handlers  # noqa: SLF001
        for event, bound in handlers.items():
            if event.is_intervention and bound:
                assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in bound:  # type: ignore[misc]
                    assoc.bind(event, handler, args)
        drop_unlogged_handlers(assoc)  # the server's copies of pynetdicom's logging handlers
        return assoc


# -- an associated connection ----------------------------------------------------------------

class GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper that replays the pre-read A-ASSOCIATE-RQ and checks every PDU
    header (and each DIMSE message's running size) before the body is read."""

    def __init__(self, assoc: Association, client: socket.socket, prefix: bytes, guard: GuardSettings,
                 refusals: Refusals, peer: tuple[str, int]) -> None:
        super().__init__(assoc, client_socket=client)
        self._prefix = bytearray(prefix)
        self._guard, self._refusals, self._peer = guard, refusals, peer
        self._header: tuple[int, int] | None = None
        self._command = bytearray()
        self._dataset_bytes = 0
        self._dataset_cap = guard.max_rq_bytes
        self._refused = False

    @property
    def ready(self) -> bool:
        return bool(self._prefix) or (not self._refused and super().ready)

    def _read(self, n: int) -> bytearray:
        """n bytes (fewer at end of stream), received straight into one buffer: a P-DATA PDU of up
        to the announced maximum is not copied chunk by chunk."""
        out = bytearray(n)
        pos = min(n, len(self._prefix))
        if pos:
            out[:pos] = self._prefix[:pos]
            del self._prefix[:pos]
        view, sock = memoryview(out), self.socket
        while pos < n and sock is not None:
            got = sock.recv_into(view[pos:], n - pos)
            if not got:
                break
            pos += got
        view.release()
        if pos < n:
            del out[pos:]
        return out

    def recv(self, nr_bytes: int) -> bytearray:
        if self._refused:
            return bytearray()
        try:
            data = self._read(nr_bytes)
        except TimeoutError:
            return self._refuse("read-timeout", f"a PDU did not arrive whole within node.limits.network_timeout_s "
                                                f"({self._guard.network_timeout_s:g} s)", None)
        except OSError as exc:
            return self._refuse("connection-error", f"{type(exc).__name__}: {exc}", None)
        if self._header is None:
            if len(data) == 6:
                pdu_type, _, length = struct.unpack(">BBL", data)
                problem = self._check_header(pdu_type, length)
                if problem:
                    return self._refuse(*problem)
                if pdu_type in KNOWN_PDU_TYPES:
                    self._header = (pdu_type, length)
        else:
            pdu_type, _ = self._header
            self._header = None
            if pdu_type == P_DATA:
                problem = self._check_pdvs(data)
                if problem:
                    return self._refuse(*problem)
        return data

    def _check_header(self, pdu_type: int, length: int) -> tuple[str, str, int] | None:
        g = self._guard
        if pdu_type == P_DATA:
            if length > g.max_pdu_bytes + _PDU_SLACK:
                return ("pdu-too-large", f"P-DATA-TF PDU declares {length} bytes, more than the {g.max_pdu_bytes} "
                        "the node announced (node.limits.max_pdu_kb)", ABORT_INVALID_PARAMETER)
        elif length > g.max_rq_bytes:
            return ("pdu-too-large", f"PDU of type 0x{pdu_type:02X} declares {length} bytes, more than "
                    f"node.limits.max_associate_rq_kb ({g.max_rq_bytes // 1024} KiB)", ABORT_INVALID_PARAMETER)
        return None

    def _check_pdvs(self, body: bytes) -> tuple[str, str, int] | None:
        """Running size of the DIMSE message the PDVs of this P-DATA-TF belong to (PS3.8 9.3.5,
        E.2: 4-byte item length, context ID, message control header)."""
        g, pos = self._guard, 0
        while pos + 6 <= len(body):
            (item_length,) = struct.unpack_from(">L", body, pos)
            if item_length < 2 or pos + 4 + item_length > len(body):
                return None  # malformed: pynetdicom's decoder refuses it
            control, start = body[pos + 5], pos + 6
            pos += 4 + item_length
            if control & 0x01:  # command fragment
                self._command += body[start:pos]
                if len(self._command) > g.max_rq_bytes:
                    return ("message-too-large", f"DIMSE command set longer than {g.max_rq_bytes} bytes",
                            ABORT_INVALID_PARAMETER)
                if control & 0x02:
                    field_value = command_field(bytes(self._command))
                    self._command.clear()
                    self._dataset_bytes = 0
                    self._dataset_cap = g.max_dataset_bytes if field_value == C_STORE_RQ else g.max_rq_bytes
            else:
                self._dataset_bytes += pos - start  # counted, not copied (up to a PDU's size)
                if self._dataset_bytes > self._dataset_cap:
                    what = "C-STORE data set" if self._dataset_cap == g.max_dataset_bytes else \
                        "data set of a message other than C-STORE"
                    return ("message-too-large", f"{what} longer than {self._dataset_cap} bytes "
                            "(ingest.max_instance_mb / node.limits.max_associate_rq_kb)", ABORT_INVALID_PARAMETER)
                if control & 0x02:
                    self._dataset_bytes = 0
        return None

    def _refuse(self, kind: str, reason: str, abort: int | None) -> bytearray:
        """Report once, A-ABORT the peer, and end the stream for pynetdicom (which then closes quietly)."""
        self._refused = True
        self._refusals.note(kind, self._peer, reason)
        quiet.on = True  # what pynetdicom logs about this connection from now on is noise
        sock = self.socket
        if sock is not None:
            abort_and_shutdown(sock, abort)
        return bytearray()
