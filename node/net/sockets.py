"""Socket options: TCP_NODELAY on every DICOM socket, SO_REUSEPORT for several listener processes."""

from __future__ import annotations

import contextlib
import socket


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm: a small DIMSE message (a C-STORE-RSP, a command set) would otherwise
    wait for the peer's delayed ACK, ~40 ms on Linux (RFC 1122 4.2.3.2 allows up to 500 ms)."""
    with contextlib.suppress(OSError):  # not a TCP socket (never the case for DICOM over TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def nodelay_of(wrapper: object) -> None:
    """TCP_NODELAY on the socket inside a pynetdicom AssociationSocket (or nothing if closed)."""
    sock = getattr(wrapper, "socket", None)
    if isinstance(sock, socket.socket):
        set_nodelay(sock)


def set_reuseport(sock: socket.socket) -> None:
    """Let several processes bind the same address and port; Linux then spreads incoming connections
    over their listening sockets by a hash of the 4-tuple (socket(7), SO_REUSEPORT, Linux >= 3.9).
    Only processes of the same effective user may join the group."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening SO_REUSEPORT socket that holds `port` (or picks one for port 0) while
    listener processes bind it too. A socket that does not listen receives no connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        set_reuseport(sock)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
