"""Raw DICOM upper-layer PDUs (PS3.8 9.3) and a socket-level peer, for attacks and fuzzing.

pynetdicom and dcmtk refuse to send malformed PDUs; these builders put any bytes on the wire.
Also: probes of a process (RSS, threads, open files) read from /proc.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 A.2.1
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07


def pdu(pdu_type: int, body: bytes, declared: int | None = None) -> bytes:
    """A PDU: type, reserved, 4-byte big-endian length (declared, or the body's), body."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if declared is None else declared) + body


def item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def presentation_context(context_id: int, abstract: str, transfer: list[str]) -> bytes:
    body = struct.pack(">BBBB", context_id, 0, 0, 0) + item(0x30, _uid(abstract))
    return item(0x20, body + b"".join(item(0x40, _uid(ts)) for ts in transfer))


def user_information(max_length: int = 16384, implementation_uid: str = "1.2.826.0.1.3680043.9.7433.1") -> bytes:
    return item(0x50, item(0x51, struct.pack(">L", max_length)) + item(0x52, _uid(implementation_uid)))


def associate_rq(called: str, calling: str = "ATTACKER", contexts: list[tuple[int, str, list[str]]] | None = None,
                 max_length: int = 16384) -> bytes:
    """A well-formed A-ASSOCIATE-RQ (PS3.8 9.3.2)."""
    contexts = contexts or [(1, VERIFICATION, [IMPLICIT_LE])]
    fixed = struct.pack(">HH", 1, 0) + called.ljust(16).encode()[:16] + calling.ljust(16).encode()[:16] + bytes(32)
    variable = item(0x10, _uid(APPLICATION_CONTEXT))
    variable += b"".join(presentation_context(*c) for c in contexts) + user_information(max_length)
    return pdu(A_ASSOCIATE_RQ, fixed + variable)


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """A presentation data value item (PS3.8 9.3.5.1, E.2): control bit 0 command, bit 1 last fragment."""
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def p_data(*pdvs: bytes) -> bytes:
    return pdu(P_DATA_TF, b"".join(pdvs))


def _element(group: int, element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", group, element, len(value)) + value


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """An implicit VR little endian command set with its group length (PS3.7 E.1)."""
    body = b"".join(_element(0x0000, e, v) for e, v in elements)
    return _element(0x0000, 0x0000, struct.pack("<L", len(body))) + body


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def c_echo_rq(message_id: int = 1) -> bytes:
    return command_set([(0x0002, _uid(VERIFICATION)), (0x0100, us(0x0030)), (0x0110, us(message_id)),
                        (0x0800, us(0x0101))])


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    return command_set([(0x0002, sop_class.encode("latin-1")), (0x0100, us(0x0001)), (0x0110, us(message_id)),
                        (0x0700, us(0)), (0x0800, us(0x0000)), (0x1000, sop_instance.encode("latin-1"))])


@dataclass
class Reply:
    pdu_type: int
    body: bytes

    def status(self) -> int | None:
        """(0000,0900) Status of the DIMSE command in a P-DATA-TF reply."""
        if self.pdu_type != P_DATA_TF:
            return None
        pos = 0
        while pos + 6 <= len(self.body):
            (length,) = struct.unpack_from(">L", self.body, pos)
            control, data = self.body[pos + 5], self.body[pos + 6:pos + 4 + length]
            pos += 4 + length
            if control & 1:
                p = 0
                while p + 8 <= len(data):
                    g, e, n = struct.unpack_from("<HHL", data, p)
                    if (g, e) == (0x0000, 0x0900):
                        return int(struct.unpack_from("<H", data, p + 8)[0])
                    p += 8 + n
        return None

    def comment(self) -> str:
        """(0000,0902) Error Comment, if any."""
        i = self.body.find(b"\x00\x00\x02\x09")
        if i < 0:
            return ""
        (n,) = struct.unpack_from("<L", self.body, i + 4)
        return self.body[i + 8:i + 8 + n].decode("latin-1").rstrip("\0 ")


class RawPeer:
    """One TCP connection that sends whatever it is given and reads whole PDUs back."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def _exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def read(self, timeout: float = 10.0) -> Reply | None:
        """The next PDU, or None when the peer closed (or reset) the connection or timed out."""
        self.sock.settimeout(timeout)
        try:
            header = self._exact(6)
            if header is None:
                return None
            pdu_type, _, length = struct.unpack(">BBL", header)
            body = self._exact(min(length, 1 << 24))
            return None if body is None else Reply(pdu_type, body)
        except OSError:
            return None

    def closed_by_peer(self, timeout: float) -> bool:
        """True once the other side has closed (EOF or reset), reading and discarding PDUs."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(65536):
                    return True
            except TimeoutError:
                continue
            except OSError:
                return True
        return False

    def associate(self, called: str, contexts: list[tuple[int, str, list[str]]] | None = None) -> Reply | None:
        self.send(associate_rq(called, contexts=contexts))
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# -- probes of a running process --------------------------------------------------------------

def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_mb(pid: int) -> float:
    return proc_status(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    return proc_status(pid, "VmHWM") / 1024


def threads(pid: int) -> int:
    return proc_status(pid, "Threads")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))
