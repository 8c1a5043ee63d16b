"""Event-driven reactors for pynetdicom associations: threads wait for work instead of polling.

pynetdicom runs two threads per association. Its DUL thread (the wire) naps `_run_loop_delay`
whenever it has nothing to do and polls the socket with a zero-timeout select; its association
thread (DIMSE messages, release, abort) naps a hard-coded 1 ms each turn. Every C-STORE therefore
waits up to a millisecond before its handler runs and again before its answer goes out, and an
idle association wakes 1,000-10,000 times a second. Each wake takes the GIL from the thread doing
real work (reading a header, writing the index): with the 5 ms GIL switch interval, that polling
taxes every association in the process (measured in docs/performance.md).

Here both threads sleep until something happens:
- the DUL thread blocks in select() on its socket and on a wake-up socket pair, written whenever
  a primitive is queued for it (to send) or an event is queued for its state machine;
- the association thread blocks on an Event set when a DIMSE message, an A-RELEASE/A-ABORT
  primitive arrives, or a user of the association asks the reactor to pause (send_c_* does,
  before sending on the same association).
Both still wake at least every IDLE_WAIT_S to check timers (ARTIM, network idle timeout) and
whether the other thread died, so nothing depends on a wake-up being delivered. The loops are
pynetdicom 3.0's own (`DULServiceProvider.run_reactor`, `Association._run_reactor`) with only the
naps replaced; pynetdicom's source carries the same wish ("TODO: try and make this event based").
Its PDU reader (`_read_pdu_data`) is pynetdicom's too, with one short cut for P-DATA-TF in Sta6.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import LOGGER, Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA

from node.net.handlers import drop_unlogged_handlers
from node.net.wire import KNOWN_PDU_TYPES, PDU_HEADER, p_data_values
from node.net.wire import P_DATA as P_DATA_TF

# Longest sleep of either thread without a wake-up: bounds how late a timer (ARTIM, network idle
# timeout, both in seconds) is noticed. Everything else wakes the thread that must act. Each
# timed wake costs ~0.1 ms of CPU here: 20 a second per thread keeps an idle association cheap.
IDLE_WAIT_S = 0.05


class WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A Queue that calls `wake` after every put, so a consumer blocked elsewhere notices it."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _CheckpointEvent(threading.Event):
    """The association's `_reactor_checkpoint`: clearing it (a user pausing the reactor to send
    on the association) also wakes the reactor, which then reaches the checkpoint at once."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake_reactor = wake

    def clear(self) -> None:
        super().clear()
        self._wake_reactor.set()

    def set(self) -> None:  # kill() and abort() set it too: the reactor then sees `_kill` at once
        super().set()
        self._wake_reactor.set()


class _Waker:
    """A socket pair: writing one byte makes select() on the other end return."""

    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (thread done)
            self.w.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.r.recv(4096):
                pass

    def close(self) -> None:
        self.r.close()
        self.w.close()


class EventDUL(DULServiceProvider):
    """pynetdicom's DUL service provider, sleeping in select() instead of polling."""

    def __init__(self, assoc: Association, wake_association: Callable[[], None]) -> None:
        super().__init__(assoc)
        self._waker = _Waker()
        self.event_queue = WakingQueue(self._wake_from_elsewhere)
        self.to_provider_queue = WakingQueue(self._wake_from_elsewhere)
        self.to_user_queue = WakingQueue(wake_association)

    def _wake_from_elsewhere(self) -> None:
        """Wake this thread when another thread queued work for it (this thread itself looks at its
        queues before it sleeps: no system call for the events its own state machine queues)."""
        if threading.get_ident() != self.ident:
            self._waker.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._waker.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self._waker.wake()
        return super().stop_dul()

    def _read_pdu_data(self) -> None:
        """pynetdicom's DULServiceProvider._read_pdu_data, with one short cut: a P-DATA-TF PDU that
        arrives in Sta6 (association established) while no other event waits goes straight to the
        DIMSE provider as a P-DATA indication, which is all the state machine would do with it
        (Evt10 in Sta6 is action DT-2, PS3.8 9.2 Table 9-10: issue P-DATA indication, stay in Sta6).
        pynetdicom's way (decode into PDU and item objects, queue the PDU and Evt10, look the action
        up, build the primitive) was a sixth of a listener process's CPU per C-STORE (py-spy,
        docs/performance.md). Everything else, and every PDU when something listens for PDU or
        state machine events (pynetdicom's logging at INFO), takes pynetdicom's path unchanged."""
        sock = self.socket
        assert sock is not None
        try:
            header = sock.recv(6)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        try:
            pdu_type, _, pdu_length = PDU_HEADER.unpack(header)
        except struct.error:
            self.event_queue.put("Evt17")
            return
        if pdu_type not in KNOWN_PDU_TYPES:
            LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        try:
            body = sock.recv(pdu_length)
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            LOGGER.error(f"The received PDU is shorter than expected ({6 + len(body)} of {6 + pdu_length} bytes "
                         "received)")
            self.event_queue.put("Evt17")
            return
        if pdu_type == P_DATA_TF and self._p_data_direct():
            values = p_data_values(body)
            if values is not None:
                primitive = P_DATA()
                # As pynetdicom's P_DATA_TF.to_primitive fills it (appending, past the setter that
                # wants lists of bytes): the DIMSE providers only index and slice each PDV.
                primitive._presentation_data_value_list = values  # type: ignore[assignment]  # noqa: SLF001
                try:
                    self.assoc.dimse.receive_primitive(primitive)
                except Exception as exc:  # as pynetdicom's state machine with a failed action: the reactor aborts
                    LOGGER.error("State Machine received an exception attempting to perform the action 'DT-2' "
                                 "while in state 'Sta6'")
                    LOGGER.exception(exc)
                    self.kill_dul()
                    raise
                return
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
            self.event_queue.put(event)
        except Exception as exc:  # noqa: BLE001 - pynetdicom's READ_PDU_EXC_F
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def _p_data_direct(self) -> bool:
        assoc = self.assoc
        return (self.state_machine.current_state == "Sta6" and self.event_queue.empty()
                and not assoc.get_handlers(evt.EVT_PDU_RECV) and not assoc.get_handlers(evt.EVT_FSM_TRANSITION))

    def _wait_for_work(self) -> None:
        """Block until the socket is readable, something is queued for this thread, or IDLE_WAIT_S."""
        if not self.to_provider_queue.empty() or not self.event_queue.empty():
            return
        wrapper = self.socket
        sock = getattr(wrapper, "socket", None)
        if sock is None or not getattr(wrapper, "_is_connected", False) or (
                isinstance(sock, ssl.SSLSocket) and sock.pending()):
            time.sleep(self._run_loop_delay)  # connecting, closed, or TLS bytes already buffered
            return
        try:
            readable, _, _ = select.select([sock, self._waker.r], [], [], IDLE_WAIT_S)
        except (OSError, ValueError):  # closed meanwhile: the loop's own check reports it (Evt17)
            return
        if self._waker.r in readable:  # only then: an empty non-blocking recv raises, per PDU
            self._waker.drain()

    def run_reactor(self) -> None:
        """pynetdicom's DULServiceProvider.run_reactor with the idle nap replaced by _wait_for_work."""
        try:
            self._run()
        finally:
            self._waker.close()

    def _run(self) -> None:
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():  # noqa: SLF001 - pynetdicom's start-up handshake
                self.assoc._dul_ready.set()  # noqa: SLF001
                idle = True
            if idle:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # Either encode and send a primitive or receive and decode a PDU per turn.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # noqa: BLE001 - as pynetdicom: abort rather than leave a broken state machine
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                with contextlib.suppress(Exception):
                    self.socket.send(abort_pdu.encode())  # type: ignore[union-attr]
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True  # noqa: SLF001
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False


class EventAssociation(Association):
    """pynetdicom's Association whose reactor thread waits on an Event instead of napping 1 ms."""

    _wake: threading.Event

    @classmethod
    def adopt(cls, assoc: Association, dimse: type[DIMSEServiceProvider] | None = None) -> EventAssociation:
        """Make a freshly built, not yet started Association event driven (used where pynetdicom
        builds the Association itself: AE.associate). Its DUL and DIMSE providers are replaced
        before either thread exists; EventAssociation adds methods only, no state of its own
        besides the wake-up Event."""
        if assoc.is_alive() or assoc._started_dul:  # noqa: SLF001
            raise RuntimeError("an association can only be made event driven before it starts")
        assoc.__class__ = cls
        assert isinstance(assoc, EventAssociation)
        assoc._install(dimse or DIMSEServiceProvider)  # noqa: SLF001 - its own class's method
        return assoc

    def _install(self, dimse: type[DIMSEServiceProvider]) -> None:
        self._wake = threading.Event()
        self.dul = EventDUL(self, self._wake.set)
        self.dimse = dimse(self)
        self.dimse.msg_queue = WakingQueue(self._wake.set)
        self._reactor_checkpoint = _CheckpointEvent(self._wake)
        self._reactor_checkpoint.set()
        drop_unlogged_handlers(self)
        # Association.__init__ set the timeouts through properties that also arm the DUL's timers.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def _run_reactor(self) -> None:
        """pynetdicom's Association._run_reactor; the 1 ms nap is a wait on `_wake`, skipped after a
        served message (another may be queued)."""
        self._is_paused = False
        served = False
        while not self._kill:
            if not served:
                self._wake.wait(IDLE_WAIT_S)
            self._wake.clear()
            # Paused while a user of the association sends on it (pynetdicom's race guard).
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            served = bool(msg)
            if msg:
                self._serve_request(msg, int(context_id or 0))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                LOGGER.info("Association Aborted" + (" (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else ""))
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


AssociationSetup = Callable[[Association], EventAssociation]


class EventAE(AE):
    """An AE whose requested associations are event driven (EventAssociation). `setup` makes each
    one so, e.g. with a DIMSE provider of the caller's (default: EventAssociation.adopt)."""

    def __init__(self, ae_title: str, setup: AssociationSetup | None = None) -> None:
        super().__init__(ae_title=ae_title)
        self._setup: AssociationSetup = setup or EventAssociation.adopt

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> Any:
        # AE.associate calls this right after building the Association, before anything starts.
        return super()._create_socket(self._setup(assoc), address, tls_args)


def rejection_of(assoc: Association) -> A_ASSOCIATE | None:
    """The A-ASSOCIATE-RJ the peer answered, or None.

    pynetdicom's requestor checks that the connection is up only after it sent its request; a
    peer that rejects and closes at once (Orthanc does) can be faster than that check, and the
    association then reads as aborted with the rejection still queued, unread. A fast DUL thread
    makes that race likely, so both places are looked at."""
    for rsp in (assoc.acceptor.primitive, assoc.dul.peek_next_pdu()):
        if isinstance(rsp, A_ASSOCIATE) and rsp.result not in (None, 0x00):
            return rsp
    return None
