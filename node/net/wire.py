"""DICOM Upper Layer wire helpers (PS3.8): PDU types, the provider's A-ABORT, reading a PDU under a
deadline, the Command Field of a raw command set. Used by the listener's guard, which checks PDUs
before pynetdicom reads them."""

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


def abort_and_shutdown(sock: socket.socket, abort: int | None) -> None:
    """Send an A-ABORT (when a reason is given) with a short deadline, then end both directions:
    a peer that stopped reading must not hold the thread that refuses it."""
    with contextlib.suppress(OSError, ValueError):
        if abort is not None:
            sock.settimeout(1.0)
            sock.sendall(a_abort(abort))
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_RDWR)
