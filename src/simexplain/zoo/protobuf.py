"""The protobuf wire format, decoded without protobuf: what zoo.graphdef reads GraphDefs with.

A message is a sequence of ``(tag, value)`` records, where ``tag = field_number << 3 |
wire_type`` is a varint and the wire type says how the value is stored (0 varint, 1 fixed 8
bytes, 2 length-prefixed bytes, 5 fixed 4 bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class WireError(Exception):
    """Internal: malformed protobuf data at a byte offset."""

    def __init__(self, message: str, offset: int, truncated: bool = False):
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.truncated = truncated


VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


def varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode an unsigned varint at ``pos``; return (value, position after it)."""
    if pos < end:  # fast path for one byte
        b = data[pos]
        if b < 0x80:
            return b, pos + 1
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError("a varint runs past the end of its record", start, truncated=True)
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("a varint is longer than 10 bytes", start)


def signed64(value: int) -> int:
    """Reinterpret an unsigned 64-bit varint as two's complement (int32/int64 fields)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(data: bytes, pos: int, end: int
           ) -> Iterator[tuple[int, int, Any]]:  # the value's type follows the wire type
    """Yield ``(field_number, wire_type, value)`` for the message in ``data[pos:end]``.

    ``value`` is an int for varint/fixed records and a ``(start, stop)`` pair for
    length-delimited records (no copy is made).
    """
    while pos < end:
        tag_at = pos
        tag, pos = varint(data, pos, end)
        number = tag >> 3
        wire = tag & 7
        if number == 0:
            raise WireError("field number 0 is not allowed", tag_at)
        if wire == VARINT:
            value, pos = varint(data, pos, end)
            yield number, wire, value
        elif wire == LEN:
            length, pos = varint(data, pos, end)
            stop = pos + length
            if stop > end:
                outer = "the file" if end == len(data) else "its enclosing message"
                raise WireError(f"a {length}-byte record runs past the end of {outer}",
                                 tag_at, truncated=True)
            yield number, wire, (pos, stop)
            pos = stop
        elif wire == FIXED32:
            if pos + 4 > end:
                raise WireError("a 4-byte value runs past the end of its message", tag_at,
                                 truncated=True)
            yield number, wire, int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        elif wire == FIXED64:
            if pos + 8 > end:
                raise WireError("an 8-byte value runs past the end of its message", tag_at,
                                 truncated=True)
            yield number, wire, int.from_bytes(data[pos:pos + 8], "little")
            pos += 8
        else:  # 3/4 are deprecated groups (never used by TensorFlow), 6/7 do not exist
            raise WireError(f"invalid wire type {wire} for field {number}", tag_at)


def expect(wire: int, wanted: int | tuple[int, ...], what: str, offset: int) -> None:
    allowed = wanted if isinstance(wanted, tuple) else (wanted,)
    if wire not in allowed:
        raise WireError(f"{what} has wire type {wire}, expected {allowed[0]}", offset)


def text(data: bytes, span: tuple[int, int], what: str) -> str:
    try:
        return bytes(data[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"{what} is not valid UTF-8 text", span[0]) from None


def packed_varints(data: bytes, span: tuple[int, int]) -> list[int]:
    pos, end = span
    out = []
    while pos < end:
        value, pos = varint(data, pos, end)
        out.append(value)
    return out
