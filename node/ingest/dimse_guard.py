"""The listener's DIMSE provider: C-STORE data sets stream into the spool, and a C-STORE request
whose command set pynetdicom cannot turn into a primitive gets a failure status.

Receiving: pynetdicom streams a C-STORE data set to a file only when its process-wide
`_config.STORE_RECV_CHUNKED_DATASET` is set, into `tempfile.NamedTemporaryFile` (process-wide
`tempfile.tempdir`). This provider decodes the P-DATA itself (as pynetdicom's `decode_msg`,
PS3.8 Annex E) and streams each data set into a `ReceiveFile` in the directory its listener
gives, so two listeners in one process never share or change global state. Fragments are written
from a memoryview (no copy of each up-to-1-MiB PDV) and the file is flushed once, after the
last fragment, before the handler reads it.

Refusing: a command set pynetdicom cannot convert (a UID over 64 characters, a malformed UID)

pynetdicom validates UIDs while converting the received command set and, on failure, logs a
traceback and aborts (Evt19). For a C-STORE-RQ the node answers instead: 0xA900 (Data Set does
not match SOP Class: the UID is unusable) with the reason in Error Comment (PS3.7 C.4.2.1.4,
PS3.4 B.2.3), discards the received data set, and the association goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

from node.ingest.spool import ReceiveFile
from node.net.wire import c_store_rsp, part10_header, store_request
from node.uids import uid_problem

log = logging.getLogger(__name__)

DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
HANDLER_FAILED = 0xC211  # pynetdicom's status for an exception in a C-STORE handler
_MIN_PEER_PDU = 1024  # a peer announcing less gets pynetdicom's fragmenting path for the answer

StoreHandler = Callable[[Path, str, str, Any], tuple[int, str]]


def _one_line(exc: BaseException) -> str:
    return str(exc)[:200].encode("unicode_escape").decode("ascii")


def _text(value: Any) -> str:
    return str(value or "").rstrip("\0 ")


def store_failure(command: Any) -> tuple[int, str]:
    """(status, reason) for a C-STORE-RQ command set pynetdicom refused to convert."""
    for keyword, tag in (("AffectedSOPClassUID", "(0000,0002)"), ("AffectedSOPInstanceUID", "(0000,1000)")):
        try:
            value = _text(command.get(keyword))
        except Exception:  # noqa: BLE001 - an undecodable element is itself the reason
            return CANNOT_UNDERSTAND, f"{keyword} {tag} cannot be decoded"
        problem = uid_problem(value)
        if problem:
            return DATASET_MISMATCH, f"{keyword} {tag} {problem}"
    return CANNOT_UNDERSTAND, "the C-STORE-RQ command set cannot be understood"


# Attributes this provider sets on a C-STORE-RQ whose Message ID and UIDs it read from the command
# set's bytes (node.net.wire.store_request): building pydicom's Dataset of the command set and
# reading its values cost a tenth of a listener process's CPU per instance (py-spy,
# docs/performance.md), so the Dataset is built only when something needs it (full_command_set).
_FIELDS, _UNDECODED = "_iodine_store_fields", "_iodine_command_undecoded"


def full_command_set(message: Any) -> Dataset:
    """The message's command set as pydicom's Dataset, decoded now if it was read directly."""
    if getattr(message, _UNDECODED, False):
        message.command_set = decode(message.encoded_command_set, True, True)
        setattr(message, _UNDECODED, False)
    return message.command_set


def decode_into(message: Any, primitive: Any, assoc: Any, receive_dir: Path) -> bool:
    """pynetdicom's DIMSEMessage.decode_msg with the C-STORE data set streamed into a ReceiveFile
    in `receive_dir`; True once the message is complete. Message control header (PS3.8 E.2):
    bit 0 command/data set, bit 1 last fragment."""
    if not isinstance(primitive, P_DATA):
        return False
    for context_id, data in primitive.presentation_data_value_list:
        control = data[0]
        if control & 1:
            message.encoded_command_set.write(data[1:])
            if control & 2:
                message.context_id = context_id
                fields = store_request(message.encoded_command_set.getvalue())
                if fields is not None:  # a C-STORE-RQ: pydicom decodes its command set only if needed
                    message.__class__ = C_STORE_RQ
                    setattr(message, _FIELDS, fields)
                    setattr(message, _UNDECODED, True)
                    sop_class, sop_uid = fields[1], fields[2]
                else:
                    command = decode(message.encoded_command_set, True, True)  # always implicit VR LE (PS3.7 6.3.1)
                    message.command_set = command
                    message.__class__ = _MESSAGE_TYPES[int(command.CommandField)][1]
                    if command.CommandDataSetType == 0x0101:  # no data set (PS3.7 E.1)
                        return True
                    sop_class = _text(command.get("AffectedSOPClassUID"))
                    sop_uid = _text(command.get("AffectedSOPInstanceUID"))
                if isinstance(message, C_STORE_RQ):
                    target = ReceiveFile(receive_dir)
                    message._data_set_file = target  # noqa: SLF001 - the attributes pynetdicom reads
                    message._data_set_path = Path(target.name)  # noqa: SLF001
                    syntax = assoc._accepted_cx[context_id].transfer_syntax[0]  # noqa: SLF001
                    target.write(part10_header(sop_class, sop_uid, syntax, PYNETDICOM_IMPLEMENTATION_UID,
                                               PYNETDICOM_IMPLEMENTATION_VERSION))
        else:
            target = message._data_set_file  # noqa: SLF001
            if target is not None:
                target.write(memoryview(data)[1:])
            else:
                message.data_set.write(data[1:])
            if control & 2:
                if target is not None:
                    target.flush()  # the C-STORE handler reads the file by its path
                return True
    return False


class GuardedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, receiving C-STORE data sets into `receive_dir` (None: as
    pynetdicom does) and answering a C-STORE-RQ it cannot convert with a failure status."""

    receive_dir: Path | None = None
    # The listener's store: (data set file, SOP Class UID, SOP Instance UID, association) ->
    # (status, error comment). None: C-STOREs go to pynetdicom's EVT_C_STORE handler.
    store: StoreHandler | None = None

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None:
            self.message = DIMSEMessage()
        try:
            done = (decode_into(self.message, primitive, self.assoc, self.receive_dir) if self.receive_dir is not None
                    else self.message.decode_msg(primitive, self.assoc))
            if not done:
                return
        except Exception as exc:  # noqa: BLE001 - pynetdicom lets a garbage command set escape its reactor
            self._discard(self.message)
            self._reset()
            log.warning("aborting association from %s: undecodable DIMSE command set (%s: %s)",
                        self.assoc.requestor.address, type(exc).__name__, _one_line(exc))
            self.dul.event_queue.put("Evt19")
            return
        message = self.message
        if self.assoc.get_handlers(evt.EVT_DIMSE_RECV):  # pynetdicom's logging at INFO reads the command set
            with contextlib.suppress(Exception):  # undecodable: pynetdicom's path below answers or aborts
                full_command_set(message)
            evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = int(message.context_id or 0)
        request = self._plain_store(message, context_id)
        if request is not None:
            self._reset()
            self._store_now(message, context_id, *request)
            return
        try:
            full_command_set(message)  # pynetdicom's path reads the Dataset
            d_primitive = message.message_to_primitive()
        except Exception as exc:  # noqa: BLE001 - pynetdicom raises ValueError/TypeError/KeyError here
            self._reset()
            if isinstance(message, C_STORE_RQ):
                self._answer_store(message, context_id, exc)
                return
            self._discard(message)
            log.warning("aborting association from %s: invalid %s message: %s: %s", self.assoc.requestor.address,
                        type(message).__name__, type(exc).__name__, _one_line(exc))
            self.dul.event_queue.put("Evt19")
            return
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[int(d_primitive.MessageIDBeingRespondedTo or 0)] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            threading.Thread(target=make_target(self.assoc._serve_request),  # noqa: SLF001 - as pynetdicom does
                             args=(d_primitive, context_id)).start()
        else:
            self.msg_queue.put((context_id, d_primitive))
        self._reset()

    def _plain_store(self, message: Any, context_id: int) -> tuple[int, str, str] | None:
        """(Message ID, SOP Class UID, SOP Instance UID) of a C-STORE-RQ this provider answers
        itself; None for anything else (pynetdicom's path: it validates, refuses or aborts)."""
        if self.store is None or not isinstance(message, C_STORE_RQ) or message._data_set_file is None:  # noqa: SLF001
            return None
        if context_id not in self.assoc._accepted_cx or self.assoc._sent_release:  # noqa: SLF001
            return None
        if 0 < (self.maximum_pdu_size or 0) < _MIN_PEER_PDU:
            return None
        fields = getattr(message, _FIELDS, None)
        if fields is not None:
            msg_id, sop_class, sop_uid = fields
        else:
            try:
                command = message.command_set
                msg_id, sop_class = int(command.MessageID), _text(command.AffectedSOPClassUID)
                sop_uid = _text(command.AffectedSOPInstanceUID)
            except Exception:  # noqa: BLE001 - pynetdicom's path answers or aborts with the reason
                return None
        if uid_problem(sop_class) or uid_problem(sop_uid) or not 0 <= msg_id <= 0xFFFF:
            return None
        return msg_id, sop_class, sop_uid

    def _store_now(self, message: Any, context_id: int, msg_id: int, sop_class: str, sop_uid: str) -> None:
        """Run the listener's store in this thread and answer with a C-STORE-RSP built here.

        The sender waits for this answer before its next C-STORE (no asynchronous operations are
        negotiated, PS3.7 D.3.3.3), so handing the request to pynetdicom's association thread
        only adds a thread hop, a primitive built and validated from the command set, a service
        class and event dispatch, and a pydicom Dataset encoded for a seven-element reply (with the
        event-driven reactors: 6.4-7.2 s -> 4.1-4.2 s of CPU for a whole-body push, docs/performance.md).
        What pynetdicom does for a C-STORE SCP is kept: the handler sees the data set's file, the
        file is closed and removed afterwards, an exception in the handler answers 0xC211, no
        answer once the association has ended."""
        target = message._data_set_file  # noqa: SLF001
        assert self.store is not None
        try:
            status, comment = self.store(Path(target.name), sop_class, sop_uid, self.assoc)
        except Exception as exc:  # as pynetdicom: a failing handler answers 0xC211
            log.exception("C-STORE handler failed for %s", sop_uid[:64])
            status, comment = HANDLER_FAILED, f"{type(exc).__name__}"
        finally:
            target.close()
            with contextlib.suppress(OSError):
                os.unlink(target.name)
        if not self.assoc.is_established:
            return
        rsp = P_DATA()
        rsp.presentation_data_value_list.append((context_id, b"\x03" + c_store_rsp(  # last command fragment (PS3.8 E.2)
            msg_id, sop_class, sop_uid, status, comment)))
        self.dul.send_pdu(rsp)

    def _reset(self) -> None:
        """Forget the message, as pynetdicom does after each one (its fix for issue #41)."""
        self.message = None

    @staticmethod
    def _discard(message: Any) -> None:
        """Remove the temporary file a C-STORE data set was streaming into: nothing is stored."""
        temp = getattr(message, "_data_set_file", None)
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.close()
                os.unlink(temp.name)

    def _answer_store(self, message: Any, context_id: int, exc: Exception) -> None:
        self._discard(message)
        command = message.command_set
        status, reason = store_failure(command)
        rsp = C_STORE()
        try:
            rsp.MessageIDBeingRespondedTo = int(command.MessageID)
        except Exception:  # noqa: BLE001 - no Message ID: nothing to answer to
            log.warning("aborting association from %s: C-STORE-RQ without a usable Message ID (%s)",
                        self.assoc.requestor.address, reason)
            self.dul.event_queue.put("Evt19")
            return
        class_uid = _text(command.get("AffectedSOPClassUID"))
        if not uid_problem(class_uid):
            rsp.AffectedSOPClassUID = class_uid
        rsp.Status = status
        rsp.ErrorComment = reason[:64]  # (0000,0902) LO
        log.warning("refused instance from %s at %s: %s (status 0x%04X)", self.assoc.requestor.ae_title,
                    self.assoc.requestor.address, reason, status)
        log.debug("pynetdicom could not convert the C-STORE-RQ: %s", type(exc).__name__)
        self.send_msg(rsp, context_id)
