"""Deterministic DICOM UIDs.

Derived UIDs use the UUID form of PS3.5 B.2 ("2.25." + the UUID as an integer), built from a
version-5 (name-based) UUID, so the same inputs always give the same UID and no OID root is needed.
"""

from __future__ import annotations

import re
import uuid

_NAMESPACE = uuid.UUID("6f1c3a52-5d3e-4b8e-9d8e-124124124124")

# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit component,
# at most 64 characters. Always used with fullmatch: `$` would also match before a final newline.
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64


def derive_uid(*parts: object) -> str:
    """A UID that depends only on `parts` (stable across runs and machines)."""
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid UID (PS3.5 9.1); safe to use as a file or folder name."""
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and _UID_RE.fullmatch(value) is not None


def uid_problem(value: object) -> str | None:
    """None for a valid UID, else what is wrong with it, in words a sender's log can show."""
    if not isinstance(value, str) or not value:
        return "is missing"
    if len(value) > MAX_UID_LENGTH:
        return f"is {len(value)} characters, over {MAX_UID_LENGTH} (PS3.5 9.1)"
    if _UID_RE.fullmatch(value) is None:
        return f"is not a valid UID (digits and dots, no leading zeros, PS3.5 9.1): {value[:70]!r}"
    return None


def ae_title(value: str) -> str:
    """An Application Entity title as the standard allows it, stripped; ValueError naming the rule.

    PS3.5 6.2 (VR AE): at most 16 characters of the default repertoire, no backslash or control
    characters; leading/trailing spaces are not significant, an all-space value is not allowed."""
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("must be 1..16 characters, not blank")
    if len(value) > 16:
        raise ValueError("must be at most 16 characters (PS3.5 6.2, VR AE)")
    if any(c == "\\" or ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ValueError("must be printable ASCII without backslash (PS3.5 6.2, VR AE)")
    return stripped
