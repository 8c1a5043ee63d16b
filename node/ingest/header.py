"""Fast header scan: pick a few top-level values out of a Part 10 file without parsing the rest.

pydicom's dcmread and its lazy element access cost about 1 ms a file, the largest share of a
C-STORE here. This scanner walks the element headers of a little-endian dataset (PS3.5 7.1:
explicit VR with 2- or 4-byte lengths, implicit VR; undefined lengths with items and delimiters,
PS3.5 7.5) and decodes only the wanted values; text that may use the Specific Character Set goes
through pydicom's own decoder. A deflated data set (PS3.5 A.5) is scanned in its first inflated
megabytes, never inflated whole. Anything it does not handle (big endian, a malformed stream)
returns None and the caller falls back to dcmread.
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from node.ingest.deflate import inflate_prefix

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
_U16 = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_U16L = struct.Struct("<H")
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length (PS3.5 7.1.2)
_IMPLICIT = struct.Struct("<HHL")  # group, element, 4-byte length (PS3.5 7.1.3)
_TEXT_VRS = {"SH", "LO", "PN", "LT", "ST", "UT", "UC"}  # may use the Specific Character Set
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}  # backslash, '=', '^' (PS3.5 6.1.2.5.3)
_TEXT_DELIMITERS = {0x5C}
_DEFLATED_PREFIX = 8 << 20  # bytes of a deflated data set inflated to find the header attributes


class RawValue(NamedTuple):
    """One element as found: its VR (None in implicit VR) and its undecoded value."""

    VR: str | None
    value: bytes


class _Malformed(Exception):
    """The byte stream is not a well-formed little-endian dataset: the caller falls back to pydicom."""


def _element(buf: mmap.mmap | bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, vr, value length, value offset) of the element at pos."""
    if pos + 8 > len(buf):
        raise _Malformed("element header past the end")
    group, elem = _U16.unpack_from(buf, pos)
    tag = (group << 16) | elem
    if implicit or group == 0xFFFE:  # items and delimiters have no VR in either encoding
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    vr = bytes(buf[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _Malformed("element header past the end")
        return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    return tag, vr, _U16L.unpack_from(buf, pos + 6)[0], pos + 8


def _skip_undefined(buf: mmap.mmap | bytes, pos: int, implicit: bool, depth: int = 0) -> int:
    """Offset just past the sequence (or encapsulated data) whose value starts at pos."""
    if depth > 16:
        raise _Malformed("sequences nested too deep")
    while True:
        tag, _, length, value = _element(buf, pos, True)
        if tag == _SEQ_END:
            return value
        if tag != _ITEM:
            raise _Malformed(f"expected an item, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if length != _UNDEFINED:
            pos = value + length
            continue
        pos = value  # an item of undefined length: a nested dataset up to the item delimiter
        while True:
            tag, _, length, value = _element(buf, pos, implicit)
            if tag == _ITEM_END:
                pos = value
                break
            pos = _skip_undefined(buf, value, implicit, depth + 1) if length == _UNDEFINED else value + length


HeaderValue = str | int | None


def _decode(tag: int, vr: str, raw: bytes, encodings: list[str]) -> HeaderValue:
    """One element's value as ingest needs it: text with trailing padding removed (multi-valued
    joined with a backslash, as in DICOM), integers for US/IS."""
    if vr == "US":
        return _U16L.unpack_from(raw, 0)[0] if len(raw) >= 2 else None
    if vr in _TEXT_VRS:
        text = decode_bytes(raw, encodings, _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS)
    else:
        text = raw.decode("ascii", errors="strict")
    text = text.rstrip("\0 ").lstrip(" " if vr not in _TEXT_VRS else "")
    if vr == "IS":
        return int(text) if text else None
    return text


def _values(meta: dict[int, RawValue], found: dict[int, RawValue],
            keywords: tuple[str, ...] | None = None) -> dict[str, HeaderValue] | None:
    """Decoded values of the found elements (only `keywords` when given) and of the file meta's
    MediaStorageSOPClassUID and TransferSyntaxUID; None when one does not decode."""
    try:
        charset = found.get(0x00080005)
        terms = charset.value.decode("ascii").strip("\0 ").split("\\") if charset else []
        encodings = convert_encodings([t.strip() for t in terms] or None)
        out: dict[str, HeaderValue] = {}
        for tag, elem in found.items():
            keyword = _keyword(tag)
            if keywords is None or keyword in keywords:
                out[keyword] = _decode(tag, elem.VR or dictionary_VR(tag), elem.value, encodings)
        for tag in (0x00020002, 0x00020010):
            if tag in meta:
                out[_keyword(tag)] = _decode(tag, "UI", meta[tag].value, encodings)
    except (UnicodeDecodeError, ValueError, LookupError, struct.error):
        return None
    return out


def scan_values(path: Path, keywords: tuple[str, ...]) -> dict[str, HeaderValue] | None:
    """The wanted top-level values of a little-endian Part 10 file (file meta's TransferSyntaxUID
    and MediaStorageSOPClassUID included), or None when the caller must use pydicom."""
    raw = _scan(path, keywords)
    if raw is None:
        return None
    meta, found, _, _ = raw
    return _values(meta, found)


@dataclass(frozen=True)
class InstanceScan:
    """What ingest learns from one pass over a received file."""

    values: dict[str, HeaderValue]  # the wanted keywords, TransferSyntaxUID, MediaStorageSOPClassUID
    pixel_bytes: tuple[int, int] | None  # see pixel_data_shortfall; None: pydicom must judge


def scan_instance(path: Path, keywords: tuple[str, ...]) -> InstanceScan | None:
    """scan_values and pixel_data_shortfall in one pass over the file (one mmap, one walk of the
    element headers up to Pixel Data); None when the caller must use pydicom for the values."""
    raw = _scan(path, (*keywords, *_PIXEL_KEYWORDS))
    if raw is None:
        return None
    meta, found, _, pixels = raw
    values = _values(meta, found, keywords)
    if values is None:
        return None
    return InstanceScan(values, _shortfall(meta, found, pixels))


@functools.lru_cache(maxsize=64)
def _tags(keywords: tuple[str, ...]) -> frozenset[int]:
    """The tags of `keywords`, computed once per keyword set (pydicom's keyword lookup was a tenth
    of a listener process's CPU when done per instance)."""
    return frozenset(int(Tag(k)) for k in keywords)


_keyword = functools.lru_cache(maxsize=1024)(keyword_for_tag)


@functools.lru_cache(maxsize=64)
def _syntax(raw: bytes) -> UID:
    """The Transfer Syntax UID of a file meta value (a handful of distinct values, each built once)."""
    return UID(raw.decode("ascii").strip("\0 "))


def _scan(path: Path, keywords: tuple[str, ...]) -> tuple[dict[int, RawValue], dict[int, RawValue],
                                                           bool, tuple[int, int, int] | None] | None:
    """(file meta, wanted elements, implicit VR?, (Pixel Data value offset, value length, file size)
    when the scan reached a top-level Pixel Data element)."""
    wanted = _tags(keywords)
    last = max(wanted)
    with open(path, "rb") as fh:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return None
    try:
        if len(buf) < 132 or buf[128:132] != b"DICM":
            return None
        meta: dict[int, RawValue] = {}
        pos = 132
        while pos + 8 <= len(buf) and _U16L.unpack_from(buf, pos)[0] == 0x0002:
            tag, vr, length, value = _element(buf, pos, False)
            meta[tag] = RawValue(vr.decode() if vr else None, bytes(buf[value:value + length]))
            pos = value + length
        ts_raw = meta.get(0x00020010)
        ts = _syntax(ts_raw.value) if ts_raw else UID("")
        if not ts or ts == ExplicitVRBigEndian:
            return None
        implicit = ts == ImplicitVRLittleEndian
        data: mmap.mmap | bytes = buf
        deflated = ts == DeflatedExplicitVRLittleEndian
        if deflated:  # the header attributes from a bounded inflated prefix
            data, pos = inflate_prefix(bytes(buf[pos:]), _DEFLATED_PREFIX), 0
        found, pixels = _scan_dataset(data, pos, implicit, wanted, last)
        if deflated:  # offsets refer to the inflated prefix: Pixel Data completeness is pydicom's to judge
            pixels = None
    except (_Malformed, struct.error, UnicodeDecodeError):
        return None
    finally:
        buf.close()
    return meta, found, implicit, pixels


def _scan_dataset(buf: mmap.mmap | bytes, pos: int, implicit: bool, wanted: frozenset[int],
                  last: int) -> tuple[dict[int, RawValue], tuple[int, int, int] | None]:
    """The wanted top-level elements of the data set starting at pos, up to the last wanted tag,
    and (offset, length, buffer size) of the top-level Pixel Data when the scan reached it.
    `_element` inlined: this loop runs for every element of every received header."""
    found: dict[int, RawValue] = {}
    size = len(buf)
    while pos < size:
        if pos + 8 > size:
            raise _Malformed("element header past the end")
        if implicit:
            group, elem, length = _IMPLICIT.unpack_from(buf, pos)
            vr, value = None, pos + 8
        else:
            group, elem, vr, length = _EXPLICIT.unpack_from(buf, pos)
            value = pos + 8
            if group == 0xFFFE:  # items and delimiters have no VR (PS3.5 7.5)
                vr, length = None, _U32.unpack_from(buf, pos + 4)[0]
            elif vr in _LONG_VRS:
                if pos + 12 > size:
                    raise _Malformed("element header past the end")
                length, value = _U32.unpack_from(buf, pos + 8)[0], pos + 12
        tag = (group << 16) | elem
        if tag == _PIXEL_DATA:
            return found, (value, length, size)
        if tag > last:
            break
        if length == _UNDEFINED:
            pos = _skip_undefined(buf, value, implicit)
            continue
        if value + length > size:
            raise _Malformed("value past the end")
        if tag in wanted:
            found[tag] = RawValue(vr.decode() if vr else None, bytes(buf[value:value + length]))
        pos = value + length
    return found, None


_PIXEL_KEYWORDS = ("SamplesPerPixel", "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "PixelData")
_PIXEL_TAGS = {int(Tag(k)) for k in _PIXEL_KEYWORDS}


def pixel_data_shortfall(path: Path) -> tuple[int, int] | None:
    """(bytes present, bytes the image needs) of native top-level Pixel Data: Rows x Columns x
    SamplesPerPixel x BitsAllocated / 8 x NumberOfFrames (PS3.5 8.1.1, PS3.3 C.7.6.3). (n, n) when
    complete or not checkable here (no Pixel Data, encapsulated); None when pydicom must decide."""
    raw = _scan(path, _PIXEL_KEYWORDS)
    if raw is None:
        return None
    meta, found, _, pixels = raw
    return _shortfall(meta, found, pixels)


def _shortfall(meta: dict[int, RawValue], found: dict[int, RawValue],
               pixels: tuple[int, int, int] | None) -> tuple[int, int] | None:
    if pixels is None:
        return (0, 0)
    offset, length, size = pixels
    ts = _syntax(meta[0x00020010].value)
    if length == _UNDEFINED or ts.is_compressed:
        return (0, 0)
    try:
        values = {_keyword(t): _decode(t, e.VR or dictionary_VR(t), e.value, []) for t, e in found.items()
                  if t in _PIXEL_TAGS}
    except (UnicodeDecodeError, ValueError, struct.error):
        return None
    rows, cols, bits = values.get("Rows"), values.get("Columns"), values.get("BitsAllocated")
    if not isinstance(rows, int) or not isinstance(cols, int) or not isinstance(bits, int):
        return None
    spp = values.get("SamplesPerPixel") if isinstance(values.get("SamplesPerPixel"), int) else 1
    frames = values.get("NumberOfFrames") if isinstance(values.get("NumberOfFrames"), int) else 1
    expected = (rows * cols * int(spp or 1) * int(frames or 1) * bits + 7) // 8
    return min(length, size - offset), expected
