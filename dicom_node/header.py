"""Read the handful of tags the node indexes, without decoding the whole header.

Runs once per received instance, before the C-STORE status goes back. For the common
case (little-endian transfer syntax, no undefined-length sequence before the series
tags, ASCII/Latin-1 character set) a direct scan of the element headers is several
times faster than ``pydicom.dcmread``. Anything else returns None and the caller uses
pydicom, so the fast path can only be faster, never different.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.datadict import tag_for_keyword

_HEAD_BYTES = 65536
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_SPECIFIC_CHARACTER_SET = 0x00080005
_LATIN1_SETS = {"", "ISO_IR 6", "ISO_IR 100", "ISO 2022 IR 6"}


def read_index_tags(path: Path, keywords: tuple[str, ...]) -> dict[str, str] | None:
    """``keyword -> value`` for ``keywords`` present, or None when the fast path can't tell."""
    wanted = {int(tag_for_keyword(k) or 0): k for k in keywords}
    last_tag = max(wanted)
    with path.open("rb") as fp:
        head = fp.read(_HEAD_BYTES)
    start, syntax = _skip_file_meta(head)
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        return None
    return _scan(head, start, syntax == _EXPLICIT_LE, wanted, last_tag)


def _skip_file_meta(head: bytes) -> tuple[int, str]:
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        return 0, ""
    (group_length,) = struct.unpack_from("<I", head, 140)
    end = 144 + group_length
    pos, syntax = 144, ""
    while pos < min(end, len(head) - 8):
        group, elem, vr = struct.unpack_from("<HH2s", head, pos)
        length, header = _explicit_length(head, pos, vr)
        if (group, elem) == (0x0002, 0x0010):
            syntax = head[pos + header : pos + header + length].rstrip(b"\x00 ").decode("ascii")
        pos += header + length
    return end, syntax


def _explicit_length(head: bytes, pos: int, vr: bytes) -> tuple[int, int]:
    if vr in _LONG_VRS:
        return struct.unpack_from("<I", head, pos + 8)[0], 12
    return struct.unpack_from("<H", head, pos + 6)[0], 8


def _scan(
    head: bytes, pos: int, explicit: bool, wanted: dict[int, str], last_tag: int
) -> dict[str, str] | None:
    found: dict[str, str] = {}
    while pos + 8 <= len(head):
        group, elem = struct.unpack_from("<HH", head, pos)
        tag = group << 16 | elem
        if tag > last_tag or tag == _PIXEL_DATA:
            return found
        if explicit:
            length, header = _explicit_length(head, pos, head[pos + 4 : pos + 6])
        else:
            length, header = struct.unpack_from("<I", head, pos + 4)[0], 8
        if length == _UNDEFINED or pos + header + length > len(head):
            return None
        value = head[pos + header : pos + header + length]
        if (
            tag == _SPECIFIC_CHARACTER_SET
            and value.strip(b"\x00 ").decode("latin-1") not in _LATIN1_SETS
        ):
            return None
        if tag in wanted:
            found[wanted[tag]] = value.rstrip(b"\x00 ").lstrip(b" ").decode("latin-1")
        pos += header + length
    return None
