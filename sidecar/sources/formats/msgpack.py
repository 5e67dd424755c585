"""MessagePack as Flask-Session stores a session, and the pickles its older versions stored.

Flask-Session 0.7 and later encode ``dict(session)`` with ``msgspec.msgpack.Encoder()`` (its default
``SESSION_SERIALIZATION_FORMAT``, ``"msgpack"``; with ``"json"`` the JSON reader applies). Earlier versions
pickled it, and 0.7/0.8 still fall back to unpickling: a record whose first byte is 0x80 followed by more bytes
is such a pickle (0x80 alone is msgpack's empty map) and goes to the pickle reader, with all its refusals.

msgspec decodes, after a structural scan of the bytes that needs no recursion: it walks the type headers only,
refusing nesting deeper than MAX_DEPTH, more items than the bounds allow, a declared length or count the data
cannot hold, trailing bytes, and every extension type, including the timestamp (-1) that msgspec would turn into
a datetime: a session read here holds only plain values. An array or a map as a map key is refused by the scan
too: msgspec would build a tuple key (whose hash can be inverted, so that keys collide) before ``to_plain``
refuses every key that is not str or int.
"""

from __future__ import annotations

import msgspec

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats import pickle as pickle_format
from sidecar.sources.formats.plain import to_plain

_DECODER = msgspec.msgpack.Decoder()
# Keys and values both count in the scan (a map of n entries has 2n + 1 items); to_plain bounds values alone.
_MAX_ITEMS = 2 * MAX_ELEMENTS + 1
_PICKLE = 0x80

# Header byte -> (bytes of its length or count field, what it is) for the variable-size types.
_SIZED = {
    0xC4: (1, "bin"), 0xC5: (2, "bin"), 0xC6: (4, "bin"),
    0xD9: (1, "str"), 0xDA: (2, "str"), 0xDB: (4, "str"),
    0xDC: (2, "array"), 0xDD: (4, "array"), 0xDE: (2, "map"), 0xDF: (4, "map"),
}  # fmt: skip
# Header byte -> payload bytes, for the fixed-size scalars (nil, booleans, floats, ints).
_FIXED = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8,
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,
}  # fmt: skip


def loads(data: bytes) -> object:
    """The plain value in ``data``: MessagePack, or a pickle (older Flask-Session) when it starts with 0x80."""
    if len(data) > MAX_INPUT_BYTES:
        raise Refused(f"MessagePack of {len(data)} bytes, over the {MAX_INPUT_BYTES}-byte bound")
    if len(data) > 1 and data[0] == _PICKLE:
        return pickle_format.loads(data)
    _scan(data)
    try:
        value = _DECODER.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise Refused(f"not MessagePack: {exc}") from None
    return to_plain(value, "MessagePack")


def _scan(data: bytes) -> None:
    """Refuse what the decoder should never see; each step reads at least one byte or closes a container."""
    size = len(data)
    pos = items = 0
    remaining = [1]  # per open container (the top level first), how many items it still holds
    in_map = [False]  # per open container, whether it is a map (whose items alternate key, value)
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            in_map.pop()
            continue
        is_key = in_map[-1] and remaining[-1] % 2 == 0
        remaining[-1] -= 1
        if pos >= size:
            raise Refused(f"MessagePack truncated at byte {pos}")
        items += 1
        if items > _MAX_ITEMS:
            raise Refused(f"MessagePack holds more than {_MAX_ITEMS} items")
        at = pos
        kind, count, pos = _header(data, pos)
        if kind in ("str", "bin"):
            pos += count
            if pos > size:
                raise Refused(f"MessagePack {kind} at byte {at} declares {count} bytes, more than the data holds")
        elif kind in ("map", "array"):
            if is_key:
                raise Refused(f"MessagePack {kind} at byte {at} is a map key; only str and int keys are read")
            slots = 2 * count if kind == "map" else count
            if slots > size - pos:  # every item takes at least one byte
                raise Refused(f"MessagePack {kind} at byte {at} declares {count} entries, more than the data holds")
            if len(remaining) > MAX_DEPTH:
                raise Refused(f"MessagePack nests deeper than {MAX_DEPTH} at byte {at}")
            remaining.append(slots)
            in_map.append(kind == "map")
    if pos > size:
        raise Refused(f"MessagePack truncated at byte {size}")
    if pos != size:
        raise Refused(f"{size - pos} bytes after the MessagePack value, at byte {pos}")


def _header(data: bytes, at: int) -> tuple[str, int, int]:
    """The kind of the item whose header starts at ``at``, its length or count, and where its content starts (for
    a scalar, where the next item starts)."""
    head, pos = data[at], at + 1
    if head <= 0x7F or head >= 0xE0:  # positive and negative fixint
        return "scalar", 0, pos
    if head <= 0x8F:
        return "map", head & 0x0F, pos
    if head <= 0x9F:
        return "array", head & 0x0F, pos
    if head <= 0xBF:
        return "str", head & 0x1F, pos
    if head in _FIXED:
        return "scalar", 0, pos + _FIXED[head]
    if head in _SIZED:
        width, kind = _SIZED[head]
        if pos + width > len(data):
            raise Refused(f"MessagePack {kind} header at byte {at} is truncated")
        return kind, int.from_bytes(data[pos : pos + width], "big"), pos + width
    if 0xC7 <= head <= 0xC9 or 0xD4 <= head <= 0xD8:
        raise Refused(f"MessagePack extension type at byte {at}; only plain values are read")
    raise Refused(f"MessagePack byte {head:#04x} at byte {at} is not a type")
