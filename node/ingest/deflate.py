"""Deflated Explicit VR Little Endian (PS3.5 A.5): the data set after the file meta is one raw
deflate stream (RFC 1951). pydicom inflates it whole in memory, so a few hundred kB can become
gigabytes (a deflate bomb; zlib's ratio reaches about 1000:1). Here it is inflated as a stream,
in bounded pieces, and measured against the instance size cap before anything else reads it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom.uid import DeflatedExplicitVRLittleEndian

_CHUNK = 1 << 20  # inflate output per step: memory stays at about this much


class InflateError(Exception):
    """The data set cannot be inflated, or inflates beyond the cap (`too_large`)."""

    def __init__(self, reason: str, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


def file_meta(path: Path) -> tuple[dict[int, bytes], int] | None:
    """The raw file meta elements of a Part 10 file (PS3.10 7.1, explicit VR little endian) and the
    offset where the data set starts; None if the file is not Part 10."""
    with open(path, "rb") as fh:
        head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        meta: dict[int, bytes] = {}
        pos = 132
        while True:
            raw = fh.read(8)
            if len(raw) < 8:
                return meta, pos
            group, element = struct.unpack_from("<HH", raw)
            if group != 0x0002:
                return meta, pos
            vr = raw[4:6]
            if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
                more = fh.read(4)
                if len(more) < 4:
                    return None
                (length,) = struct.unpack("<L", more)
                header = 12
            else:
                (length,) = struct.unpack_from("<H", raw, 6)
                header = 8
            if length > 1 << 16:  # no file meta element is that long
                return None
            meta[(group << 16) | element] = fh.read(length)
            pos += header + length


def is_deflated(path: Path) -> bool:
    parsed = file_meta(path)
    if parsed is None:
        return False
    ts = parsed[0].get(0x00020010, b"").decode("ascii", "replace").strip("\0 ")
    return ts == DeflatedExplicitVRLittleEndian


def inflated_size(path: Path, cap_bytes: int) -> int:
    """Bytes the deflated data set of `path` inflates to, streaming; InflateError(too_large) as
    soon as it passes cap_bytes, InflateError when the stream is corrupt."""
    parsed = file_meta(path)
    if parsed is None:
        raise InflateError("not a DICOM Part 10 file")
    _, offset = parsed
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            while True:
                data = fh.read(_CHUNK // 4)
                pending = data
                while True:
                    out = inflater.decompress(pending, _CHUNK)
                    total += len(out)
                    if total > cap_bytes:
                        raise InflateError(f"the deflated data set inflates to more than {cap_bytes / 1e6:.0f} MB",
                                           too_large=True)
                    pending = inflater.unconsumed_tail
                    if not pending:
                        break
                if not data or inflater.eof:
                    break
            total += len(inflater.flush())
    except zlib.error as exc:
        raise InflateError(f"the deflated data set is not a valid deflate stream ({exc})") from None
    if total > cap_bytes:
        raise InflateError(f"the deflated data set inflates to more than {cap_bytes / 1e6:.0f} MB", too_large=True)
    return total


def inflate_prefix(data: bytes, limit: int) -> bytes:
    """At most `limit` bytes of the inflated stream `data` (enough for the header attributes)."""
    try:
        return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, limit)
    except zlib.error:
        return b""
