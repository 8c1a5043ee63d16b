"""Values of DICOM attributes as Python values: DA/TM/DT (PS3.5 6.2), numbers, private elements.

Pure parsing of in-memory datasets, used by the SUV computation (node.quant.suv).
"""

from __future__ import annotations

import math
from datetime import date, datetime, time

from pydicom.dataset import Dataset


def parse_da(value: str) -> date:
    v = str(value).strip()
    return date(int(v[0:4]), int(v[4:6]), int(v[6:8]))


def parse_tm(value: str) -> time:
    """TM (PS3.5 6.2): HH[MM[SS[.F{1,6}]]], some writers add colons."""
    v = str(value).strip().replace(":", "")
    if not v or not v[:2].isdigit():
        raise ValueError(f"not a DICOM time: {value!r}")
    hh = int(v[0:2])
    mm = int(v[2:4]) if len(v) >= 4 else 0
    ss = int(v[4:6]) if len(v) >= 6 else 0
    frac = v[7:13] if len(v) > 7 and v[6] == "." else ""
    micro = int(frac.ljust(6, "0")) if frac else 0
    return time(hh, mm, min(ss, 59), micro)


def parse_dt(value: str) -> datetime:
    """DT (PS3.5 6.2): YYYYMMDDHHMMSS.FFFFFF&ZZXX; the UTC offset is ignored (all times of one
    scan share a zone)."""
    v = str(value).strip()
    for sign in ("+", "-"):
        pos = v.find(sign, 8)
        if pos > 0:
            v = v[:pos]
    if len(v) < 8:
        raise ValueError(f"not a DICOM date-time: {value!r}")
    d = parse_da(v[:8])
    return datetime.combine(d, parse_tm(v[8:]) if len(v) > 8 else time())


def combine(ds: Dataset, date_kw: str, time_kw: str) -> datetime | None:
    d, t = ds.get(date_kw), ds.get(time_kw)
    if not d or not t:
        return None
    return datetime.combine(parse_da(d), parse_tm(t))


def private_value(ds: Dataset, group: int, creator: str, element: int) -> tuple[object | None, bool]:
    """(value, creator_found) of a private element; falls back to block 0x10 when the creator is
    missing (some test objects omit it)."""
    for block in range(0x10, 0x100):
        tag = (group << 16) | block
        if tag not in ds:
            continue
        if str(ds[tag].value).strip() == creator:
            full = (group << 16) | (block << 8) | element
            return (ds[full].value if full in ds else None), True
    full = (group << 16) | 0x1000 | element
    return (ds[full].value if full in ds else None), False


def to_float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


