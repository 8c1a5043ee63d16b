"""DICOM Upper Layer wire helpers (PS3.8): PDU types, the provider's A-ABORT, reading a PDU under a
deadline, the PDVs of a P-DATA-TF, the Command Field and C-STORE-RQ fields of a raw command set, the
C-STORE-RSP and Part 10 file meta written directly. Used by the listener's guard (which checks PDUs
before pynetdicom reads them), the event-driven DUL and the listener's DIMSE provider."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

A_ASSOCIATE_RQ, P_DATA = 0x01, 0x04
KNOWN_PDU_TYPES = range(0x01, 0x08)
# A-ABORT reason/diagnostic values with source 2 "service provider" (PS3.8 9.3.8, Table 9-26).
ABORT_UNEXPECTED_PDU, ABORT_INVALID_PARAMETER = 0x02, 0x06
C_STORE_RQ = 0x0001
_COMMAND_FIELD = 0x00000100
PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, PDU length (PS3.8 9.3.1)
_ITEM_LENGTH = struct.Struct(">L")


def p_data_values(body: bytes | bytearray) -> list[tuple[int, memoryview]] | None:
    """The PDV items of a P-DATA-TF PDU body (PS3.8 9.3.5.1: 4-byte item length, presentation
    context ID, then the PDV: message control header and fragment) as (context ID, PDV) with each
    PDV a view into `body` (no copy); None when an item is malformed (pynetdicom's decoder then
    rejects the PDU, Evt19)."""
    items: list[tuple[int, memoryview]] = []
    view, pos, end = memoryview(body), 0, len(body)
    while pos < end:
        if pos + 6 > end:
            return None
        (length,) = _ITEM_LENGTH.unpack_from(body, pos)
        if length < 2 or pos + 4 + length > end:
            return None
        items.append((body[pos + 4], view[pos + 5:pos + 4 + length]))
        pos += 4 + length
    return items or None


def a_abort(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (PS3.8 9.3.8): type 07, length 4, source 2."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, reason)


def recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    """n bytes, or fewer at end of stream; TimeoutError once the deadline has passed."""
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def command_field(command: bytes) -> int | None:
    """(0000,0100) Command Field of an implicit VR little endian command set (PS3.7 E.1), or None."""
    pos = 0
    while pos + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHL", command, pos)
        tag = (group << 16) | element
        if tag == _COMMAND_FIELD and length == 2 and pos + 10 <= len(command):
            return int(struct.unpack_from("<H", command, pos + 8)[0])
        if tag > _COMMAND_FIELD:
            return None
        pos += 8 + length
    return None


# -- C-STORE-RQ command set (PS3.7 9.3.1.1 Table 9.3-1), implicit VR little endian (PS3.7 6.3.1) --

_AFFECTED_SOP_CLASS, _MESSAGE_ID = 0x00000002, 0x00000110
_DATA_SET_TYPE, _AFFECTED_SOP_INSTANCE = 0x00000800, 0x00001000
_ELEMENT_HEADER = struct.Struct("<HHL")
_US = struct.Struct("<H")


def store_request(command: bytes) -> tuple[int, str, str] | None:
    """(Message ID, Affected SOP Class UID, Affected SOP Instance UID) of a C-STORE-RQ command set
    announcing a data set, read straight from its bytes; None for any other message and for
    anything unusual (a value that is not ASCII, a short element, a missing field), which then goes
    through pydicom and pynetdicom's validation as before. The UIDs are returned as sent, without
    their NUL/space padding (PS3.5 6.2); the caller still validates them."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(command)
    while pos + 8 <= end:
        group, element, length = _ELEMENT_HEADER.unpack_from(command, pos)
        pos += 8
        if group != 0x0000 or pos + length > end:
            return None
        values[element] = command[pos:pos + length]
        pos += length
    if pos != end:
        return None
    field, msg_id, data_set = values.get(_COMMAND_FIELD), values.get(_MESSAGE_ID), values.get(_DATA_SET_TYPE)
    if (field is None or len(field) != 2 or _US.unpack(field)[0] != C_STORE_RQ or msg_id is None or len(msg_id) != 2
            or data_set is None or len(data_set) != 2 or _US.unpack(data_set)[0] == _NO_DATA_SET):
        return None
    try:
        sop_class = values[_AFFECTED_SOP_CLASS].decode("ascii").rstrip("\0 ")
        sop_uid = values[_AFFECTED_SOP_INSTANCE].decode("ascii").rstrip("\0 ")
    except (KeyError, UnicodeDecodeError):
        return None
    return _US.unpack(msg_id)[0], sop_class, sop_uid


def abort_and_shutdown(sock: socket.socket, abort: int | None) -> None:
    """Send an A-ABORT (when a reason is given) with a short deadline, then end both directions:
    a peer that stopped reading must not hold the thread that refuses it."""
    with contextlib.suppress(OSError, ValueError):
        if abort is not None:
            sock.settimeout(1.0)
            sock.sendall(a_abort(abort))
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)


# -- C-STORE-RSP command set (PS3.7 9.3.1.2 Table 9.3-2), implicit VR little endian (PS3.7 6.3.1) --

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows (PS3.7 E.1)


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii", "replace")  # a non-ASCII UID is refused later, by its validation
    return raw + b"\0" if len(raw) % 2 else raw  # UI pads with NUL to even length (PS3.5 6.2)


def c_store_rsp(message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int,
                error_comment: str = "") -> bytes:
    """The encoded command set of a C-STORE-RSP: what pynetdicom builds through a primitive, a
    pydicom Dataset and its writer, written directly (elements in ascending tag order, group length
    first; Error Comment (0000,0902) LO, 64 characters at most, only when given)."""
    body = _element(0x00000002, _uid(sop_class_uid))
    body += _element(0x00000100, struct.pack("<H", _C_STORE_RSP))
    body += _element(0x00000120, struct.pack("<H", message_id))
    body += _element(0x00000800, struct.pack("<H", _NO_DATA_SET))
    body += _element(0x00000900, struct.pack("<H", status))
    if error_comment:
        comment = error_comment[:64].encode("ascii", "replace")
        body += _element(0x00000902, comment + b" " if len(comment) % 2 else comment)
    body += _element(0x00001000, _uid(sop_instance_uid))
    return _element(0x00000000, struct.pack("<L", len(body))) + body


# -- Part 10 file meta information (PS3.10 7.1), explicit VR little endian ---------------------

def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ"):  # 4-byte length after two reserved bytes (PS3.5 7.1.2)
        return struct.pack("<HH", 0x0002, element) + vr + b"\0\0" + struct.pack("<L", len(value)) + value
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                  implementation_class_uid: str, implementation_version_name: str) -> bytes:
    """Preamble, "DICM" and the file meta group of a Part 10 file: what pydicom writes for the
    same values (tested), without building a Dataset for every received instance."""
    name = implementation_version_name.encode("ascii", "replace")
    body = (_meta_element(0x0001, b"OB", b"\x00\x01")
            + _meta_element(0x0002, b"UI", _uid(sop_class_uid))
            + _meta_element(0x0003, b"UI", _uid(sop_instance_uid))
            + _meta_element(0x0010, b"UI", _uid(transfer_syntax_uid))
            + _meta_element(0x0012, b"UI", _uid(implementation_class_uid))
            + _meta_element(0x0013, b"SH", name + b" " if len(name) % 2 else name))
    return b"\0" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<L", len(body))) + body
