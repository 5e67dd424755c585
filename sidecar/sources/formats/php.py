"""PHP sessions as phpredis's session handler stores them, in PHP's ``serialize`` format.

Two ``session.serialize_handler`` layouts are read: ``php`` (PHP's default: ``name|<value>name2|<value>...``,
one serialized value after each variable name) and ``php_serialize`` (the whole ``$_SESSION`` array serialized
once). ``php_binary`` is not read, nor igbinary (a binary format, starting with ``\\x00\\x00\\x00\\x02``).

Of the values, only ``N;``, ``b:0;``/``b:1;``, ``i:<int>;``, ``d:<float>;`` (with ``INF``, ``-INF`` and
``NAN``), ``s:<byte length>:"<bytes>";`` and ``a:<count>:{<key><value>...}`` with ``i:`` or ``s:`` keys are read.
Objects (``O:``, ``C:``), references (``r:``, ``R:``), enums (``E:``) and everything else are refused: ``O:`` is
how PHP object injection works, and a reader that never builds an object is immune to it.

What comes out mirrors what PHP would hold: a string is a ``str`` when it is UTF-8 and ``bytes`` otherwise; an
array whose keys are 0, 1, ... n-1 in order (a PHP list) is a ``list``, any other a ``dict``; a string key that
PHP itself would turn into an integer (``"7"``, not ``"07"`` or ``"-0"``) is an ``int``, and a key repeated in one
array is refused (PHP would keep the last; a reader should not have to guess). Integers are PHP's: 64 bits.
"""

from __future__ import annotations

import re
from typing import Literal

from sidecar.core.session import shown
from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused

_INT = re.compile(rb"i:([+-]?[0-9]{1,20});")
_BOOL = re.compile(rb"b:([01]);")
# PHP's own grammar for d: (ext/standard/var_unserializer.re): an integer or decimal, an optional exponent,
# or one of the three spellings serialize() writes for the non-finite values.
_FLOAT = re.compile(rb"d:(NAN|-?INF|[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?);")
_STRING = re.compile(rb's:([0-9]{1,10}):"')
_ARRAY = re.compile(rb"a:([0-9]{1,10}):\{")
# The integer keys PHP makes of numeric strings (zend_handle_numeric_str): no sign but "-", no leading zero.
_NUMERIC_KEY = re.compile(r"-?[1-9][0-9]{0,18}|0")
_INT64 = (-(2**63), 2**63 - 1)
_IGBINARY = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")
_NAMES = {
    b"O": "an object (O:)", b"C": "a custom-serialized object (C:)", b"r": "a reference (r:)",
    b"R": "a reference (R:)", b"E": "an enum (E:)", b"S": "an escaped string (S:)",
}  # fmt: skip

Handler = Literal["php", "php_serialize"]


def loads(data: bytes) -> object:
    """The one PHP-serialized value that ``data`` holds, nothing before or after it."""
    reader = _Reader(data)
    value = reader.value(0)
    reader.end()
    return value


def loads_session(data: bytes, handler: Handler) -> dict[str, object]:
    """The session variables (name -> value) that PHP's session handler ``handler`` wrote as ``data``."""
    if data.startswith(_IGBINARY):
        raise Refused("PHP session is igbinary-serialized; only the php and php_serialize handlers are read")
    if handler == "php_serialize":
        return _serialize_session(data)
    if handler == "php":
        return _php_session(data)
    raise Refused(f"PHP session handler {handler!r} is not read (php and php_serialize are)")


def _serialize_session(data: bytes) -> dict[str, object]:
    if not data:
        return {}  # PHP reads an empty record as an empty session
    value = loads(data)
    if isinstance(value, list):  # keys 0..n-1: PHP would skip each numeric variable name
        if value:
            raise Refused(f"php_serialize session has the integer variable names 0 to {len(value) - 1}")
        return {}
    if not isinstance(value, dict):
        raise Refused(f"php_serialize session holds {_kind(value)}, not an array")
    out: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise Refused(f"php_serialize session has the integer variable name {key}")
        out[key] = item
    return out


def _php_session(data: bytes) -> dict[str, object]:
    reader = _Reader(data)
    out: dict[str, object] = {}
    while not reader.at_end():
        bar = data.find(b"|", reader.pos)
        if bar < 0:
            raise Refused(f"PHP session has {len(data) - reader.pos} bytes after its last value, with no '|'")
        try:
            name = data[reader.pos : bar].decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"PHP session variable name at byte {reader.pos} is not UTF-8") from None
        if not name:
            raise Refused(f"PHP session has an empty variable name at byte {reader.pos}")
        if name in out:
            raise Refused(f"PHP session has the variable {shown(name)} twice")
        reader.pos = bar + 1
        out[name] = reader.value(0)
    return out


def _kind(value: object) -> str:
    return "an array" if isinstance(value, dict | list) else f"a {type(value).__name__}"


class _Reader:
    def __init__(self, data: bytes) -> None:
        if len(data) > MAX_INPUT_BYTES:
            raise Refused(f"PHP data of {len(data)} bytes, over the {MAX_INPUT_BYTES}-byte bound")
        self.data = data
        self.pos = 0
        self.elements = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        if not self.at_end():
            raise Refused(f"{len(self.data) - self.pos} bytes after the PHP value, at byte {self.pos}")

    def _match(self, pattern: re.Pattern[bytes], what: str) -> re.Match[bytes]:
        match = pattern.match(self.data, self.pos)
        if match is None:
            raise Refused(f"PHP {what} at byte {self.pos} is malformed or truncated")
        self.pos = match.end()
        return match

    def value(self, depth: int) -> object:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise Refused(f"PHP data holds more than {MAX_ELEMENTS} values")
        tag = self.data[self.pos : self.pos + 1]
        if tag == b"N":
            if self.data[self.pos : self.pos + 2] != b"N;":
                raise Refused(f"PHP null at byte {self.pos} is malformed or truncated")
            self.pos += 2
            return None
        if tag == b"b":
            return self._match(_BOOL, "boolean").group(1) == b"1"
        if tag == b"i":
            return self._int()
        if tag == b"d":
            return float(self._match(_FLOAT, "float").group(1))
        if tag == b"s":
            raw = self._string()
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
        if tag == b"a":
            return self._array(depth + 1)
        if not tag:
            raise Refused(f"PHP data ends at byte {self.pos} where a value should start")
        name = _NAMES.get(tag, f"the type tag {tag!r}")
        raise Refused(f"PHP data holds {name} at byte {self.pos}; only N, b, i, d, s and a are read")

    def _int(self) -> int:
        at = self.pos
        value = int(self._match(_INT, "integer").group(1))
        if not _INT64[0] <= value <= _INT64[1]:
            raise Refused(f"PHP integer at byte {at} is out of PHP's 64-bit range")
        return value

    def _string(self) -> bytes:
        at = self.pos
        size = int(self._match(_STRING, "string").group(1))
        start, stop = self.pos, self.pos + size
        if stop + 2 > len(self.data):
            raise Refused(f"PHP string at byte {at} declares {size} bytes, more than the data holds")
        if self.data[stop : stop + 2] != b'";':
            raise Refused(f'PHP string at byte {at} does not end with ";" after its {size} bytes')
        self.pos = stop + 2
        return self.data[start:stop]

    def _key(self) -> str | int:
        tag = self.data[self.pos : self.pos + 1]
        if tag == b"i":
            return self._int()
        if tag == b"s":
            at = self.pos
            raw = self._string()
            try:
                key = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused(f"PHP array key at byte {at} is not UTF-8") from None
            if _NUMERIC_KEY.fullmatch(key) and _INT64[0] <= int(key) <= _INT64[1]:
                return int(key)
            return key
        raise Refused(f"PHP array key at byte {self.pos} is neither i: nor s:")

    def _array(self, depth: int) -> list[object] | dict[str | int, object]:
        at = self.pos
        if depth > MAX_DEPTH:
            raise Refused(f"PHP arrays nest deeper than {MAX_DEPTH} at byte {at}")
        count = int(self._match(_ARRAY, "array").group(1))
        # The smallest entry, i:0;N;, is 6 bytes: a count the rest of the data cannot hold is refused up front.
        if count * 6 > len(self.data) - self.pos:
            raise Refused(f"PHP array at byte {at} declares {count} entries, more than the data holds")
        out: dict[str | int, object] = {}
        for _ in range(count):
            key_at = self.pos
            key = self._key()
            if key in out:
                quoted = shown(key) if isinstance(key, str) else key
                raise Refused(f"PHP array at byte {at} has the key {quoted} twice (at byte {key_at})")
            out[key] = self.value(depth)
        if self.data[self.pos : self.pos + 1] != b"}":
            raise Refused(f"PHP array at byte {at} does not end with }} after its {count} entries")
        self.pos += 1
        if all(key == index for index, key in enumerate(out)):
            return list(out.values())
        return out
