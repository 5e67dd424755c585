"""JSON as Express's connect-redis (``JSON.stringify(session)``) and Rails' redis-store with ``serializer: JSON``
store a session.

Python's ``json`` parses, inside bounds it does not have by itself: the input is UTF-8 of at most
MAX_INPUT_BYTES; nesting is measured by a linear scan before parsing (which also refuses an unterminated
string), so the parser never recurses deeper than MAX_DEPTH (and never reaches a RecursionError); NaN and the
infinities (spelled out or overflowing, ``1e999``) are refused, as are integers over 64 bits; a duplicate key is
refused rather than letting the last one win, since two readers of the same bytes may disagree on which one
counts; a string with a lone surrogate escape (``"\\ud800"``) is refused, since it could not be encoded again.
"""

from __future__ import annotations

import json
import math
import re

from sidecar.core.session import shown
from sidecar.sources.formats import MAX_DEPTH, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats.plain import to_plain

# What the nesting scan stops at outside strings: a bracket, or the quote that opens a string.
_STRUCTURE = re.compile(r'["\[\]{}]')
# The rest of a string after its opening quote (escapes included, unrolled so one match is linear). It is tried
# once per string, from its opening quote only: tried from every quote, an unterminated string would be scanned
# to the end of the input once per quote in it (quadratic: 35 s for 64 KiB of \").
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# 21 characters hold any 64-bit integer with its sign; longer digit strings are never converted (to_plain
# then bounds the value to 64 bits).
_MAX_INT_CHARS = 21


def loads(data: bytes) -> object:
    """The JSON value in ``data`` as plain values; Refused for anything outside the bounds above."""
    if len(data) > MAX_INPUT_BYTES:
        raise Refused(f"JSON of {len(data)} bytes, over the {MAX_INPUT_BYTES}-byte bound")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"JSON is not UTF-8: {exc.reason} at byte {exc.start}") from None
    _check_nesting(text)
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
        )
    except Refused:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise Refused(f"not JSON: {exc}") from None
    # The parse built only dicts, lists and scalars; the walk bounds their count and checks strings.
    return to_plain(value, "JSON")


def loads_object(data: bytes) -> dict[str, object]:
    """The JSON object in ``data`` (a session), Refused when the top level is anything else."""
    value = loads(data)
    if not isinstance(value, dict):
        raise Refused(f"JSON holds a {type(value).__name__} at the top level, not an object")
    return value  # JSON object keys are always str


def _check_nesting(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, and a string that never ends (JSON would refuse it too); each
    character is looked at a bounded number of times."""
    depth = 0
    pos = 0
    while (match := _STRUCTURE.search(text, pos)) is not None:
        at = match.start()
        char = text[at]
        if char == '"':
            rest = _STRING_REST.match(text, at + 1)
            if rest is None:
                raise Refused(f"JSON string at character {at} is not terminated")
            pos = rest.end()
            continue
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise Refused(f"JSON nests deeper than {MAX_DEPTH} at character {at}")
        else:
            depth -= 1
        pos = at + 1


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise Refused(f"JSON object has the key {shown(key)} twice")
        out[key] = value
    return out


def _constant(name: str) -> float:
    raise Refused(f"JSON holds {name}, which JSON does not allow")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Refused(f"JSON number {text[:32]} overflows a float")
    return value


def _int(text: str) -> int:
    if len(text) > _MAX_INT_CHARS:
        raise Refused(f"JSON integer of {len(text)} digits, over 64 bits")
    return int(text)
