"""Ruby Marshal (format 4.8) as Rails' redis-store / redis-actionpack store a session by default.

Marshal can name any class, and loading it runs that class's hooks (``marshal_load``, ``_load``, ``init_with``):
the source of Ruby's deserialization gadget chains. The session Rails keeps is a plain Hash (string keys; Devise
adds ``"warden.user.user.key" => [[id], "salt"]``), so the subset read here is the one such a Hash needs, and
anything naming a class is refused:

* read: nil ``0``, ``T``, ``F``, Fixnum ``i``, Bignum ``l`` (up to 64 bits), Float ``f``, String ``"`` (bare,
  a binary string, read as ``bytes``; or wrapped in ``I`` with only its encoding as instance variable: ``E`` true
  (UTF-8) or false (US-ASCII) read as ``str`` when it decodes, ``encoding`` names any other, read as ``bytes``),
  Symbol ``:`` and its back-reference ``;`` (``str``), Array ``[``, Hash ``{`` (keys: strings, symbols, integers;
  a key seen twice, such as ``"a"`` and ``:a``, is refused), and the object link ``@`` to a value already read
  whole (Ruby writes one when the same object appears twice; a link to a container still being read is a
  cycle and refused; a linked value counts its full size and depth against the bounds);
* refused, naming the tag: objects ``o``, ``u``/``U`` (custom dumps), classes and modules ``c``/``m``/``M``,
  ``d`` (data), ``e`` (extended), ``C`` (a String/Array/Hash subclass, such as HashWithIndifferentAccess), ``S``
  (Struct), ``/`` (Regexp), ``}`` (Hash with a default value), and any other instance variable.

A store that keeps something else should be configured with redis-store's ``serializer: JSON`` and read with the
JSON reader.
"""

from __future__ import annotations

import re

from sidecar.core.session import shown
from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused

_HEADER = b"\x04\x08"
_FLOAT = re.compile(rb"-?inf|nan|-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?")
_MAX_INT_BITS = 64
_NAMES = {
    b"o": "an object (o)", b"u": "a custom-dumped object (u)", b"U": "a marshal_dump object (U)",
    b"c": "a class (c)", b"m": "a module (m)", b"M": "a class or module (M)", b"d": "a data object (d)",
    b"e": "an extended object (e)", b"C": "a user subclass (C)", b"S": "a Struct (S)", b"/": "a Regexp (/)",
    b"}": "a Hash with a default value (})",
}  # fmt: skip
_CONTAINERS = (b"[", b"{")


def loads(data: bytes) -> object:
    """The plain value Ruby's ``Marshal.dump`` wrote as ``data``; Refused outside the subset above."""
    if len(data) > MAX_INPUT_BYTES:
        raise Refused(f"Marshal data of {len(data)} bytes, over the {MAX_INPUT_BYTES}-byte bound")
    if not data.startswith(_HEADER):
        raise Refused(f"not Ruby Marshal 4.8: starts with {data[:2]!r}, not {_HEADER!r}")
    reader = _Reader(data)
    value, _ = reader.value(0)
    if reader.pos != len(data):
        raise Refused(f"{len(data) - reader.pos} bytes after the Marshal value, at byte {reader.pos}")
    return value


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = len(_HEADER)
        self.elements = 0
        self.symbols: list[str] = []
        # Ruby's object table (what "@" links index), in the order objects start: each entry's value and, once
        # read whole, its size in values and its height in containers (None while it is still being read).
        self.objects: list[object] = []
        self.shapes: list[tuple[int, int] | None] = []

    def _byte(self) -> bytes:
        if self.pos >= len(self.data):
            raise Refused(f"Marshal data truncated at byte {self.pos}")
        self.pos += 1
        return self.data[self.pos - 1 : self.pos]

    def _long(self) -> int:
        # Ruby's packed integer (w_long): small values in one signed byte, others as 1-4 little-endian bytes.
        at = self.pos
        code = int.from_bytes(self._byte(), "little", signed=True)
        if code == 0:
            return 0
        if code > 4 or code < -4:
            return code - 5 if code > 0 else code + 5
        size = abs(code)
        if self.pos + size > len(self.data):
            raise Refused(f"Marshal integer at byte {at} is truncated")
        raw = int.from_bytes(self.data[self.pos : self.pos + size], "little")
        self.pos += size
        return raw if code > 0 else raw - (1 << (8 * size))

    def _bytes(self) -> bytes:
        at = self.pos
        size = self._long()
        if size < 0 or self.pos + size > len(self.data):
            raise Refused(f"Marshal byte string at byte {at} declares {size} bytes, more than the data holds")
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def _count(self, what: str, per_item: int) -> int:
        at = self.pos
        count = self._long()
        if count < 0 or count * per_item > len(self.data) - self.pos:
            raise Refused(f"Marshal {what} at byte {at} declares {count} entries, more than the data holds")
        return count

    def _add(self, count: int) -> None:
        self.elements += count
        if self.elements > MAX_ELEMENTS:
            raise Refused(f"Marshal data holds more than {MAX_ELEMENTS} values")

    def _register(self, value: object) -> int:
        self.objects.append(value)
        self.shapes.append(None)
        return len(self.objects) - 1

    def value(self, depth: int) -> tuple[object, int]:
        """The next value, ``depth`` containers below the top, and its height in containers."""
        at = self.pos
        tag = self._byte()
        if tag in _CONTAINERS:
            if depth >= MAX_DEPTH:
                raise Refused(f"Marshal containers nest deeper than {MAX_DEPTH} at byte {at}")
            start, index = self.elements, len(self.objects)
            self._add(1)
            height = self._array(depth) if tag == b"[" else self._hash(depth, at)
            self.shapes[index] = (self.elements - start, height)
            return self.objects[index], height
        if tag == b"@":
            return self._link(at, depth)
        self._add(1)
        return self._scalar(tag, at), 0

    def _scalar(self, tag: bytes, at: int) -> object:
        if tag == b"0":
            return None
        if tag in (b"T", b"F"):
            return tag == b"T"
        if tag == b"i":
            return self._long()
        if tag == b":":
            return self._symbol()
        if tag == b";":
            return self._symlink(at)
        if tag == b'"':
            return self._leaf(self._bytes())
        if tag == b"f":
            return self._leaf(self._float(at))
        if tag == b"l":
            return self._leaf(self._bignum(at))
        if tag == b"I":
            return self._ivar(at)
        name = _NAMES.get(tag, f"the type tag {tag!r}")
        raise Refused(f"Marshal data holds {name} at byte {at}; only plain values are read")

    def _leaf(self, value: object) -> object:
        self.shapes[self._register(value)] = (1, 0)
        return value

    def _link(self, at: int, depth: int, *, count: bool = True) -> tuple[object, int]:
        index = self._long()
        if not 0 <= index < len(self.objects):
            raise Refused(f"Marshal link at byte {at} points to object {index}, which was not read")
        shape = self.shapes[index]
        if shape is None:
            raise Refused(f"Marshal link at byte {at} points into a container that contains it")
        size, height = shape
        if depth + height > MAX_DEPTH:
            raise Refused(f"Marshal link at byte {at} nests deeper than {MAX_DEPTH}")
        if count:
            self._add(size)
        return self.objects[index], height

    def _array(self, depth: int) -> int:
        count = self._count("array", 1)
        out: list[object] = []
        self._register(out)
        height = 1
        for _ in range(count):
            item, below = self.value(depth + 1)
            out.append(item)
            height = max(height, 1 + below)
        return height

    def _hash(self, depth: int, at: int) -> int:
        count = self._count("hash", 2)
        out: dict[str | int, object] = {}
        self._register(out)
        height = 1
        for _ in range(count):
            key_at = self.pos
            key, _ = self.value(depth + 1)
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise Refused(f"Marshal hash at byte {at} has a {type(key).__name__} key at byte {key_at}")
            if key in out:
                raise Refused(
                    f"Marshal hash at byte {at} has the key {shown(key) if isinstance(key, str) else key} twice"
                )
            item, below = self.value(depth + 1)
            out[key] = item
            height = max(height, 1 + below)
        return height

    def _symbol(self) -> str:
        at = self.pos
        raw = self._bytes()
        try:
            name = raw.decode("ascii")  # a symbol with other bytes is written with its encoding (I:)
        except UnicodeDecodeError:
            raise Refused(f"Marshal symbol at byte {at} is not ASCII and names no encoding") from None
        self.symbols.append(name)
        return name

    def _symlink(self, at: int) -> str:
        index = self._long()
        if not 0 <= index < len(self.symbols):
            raise Refused(f"Marshal symbol link at byte {at} points to symbol {index}, which was not read")
        return self.symbols[index]

    def _float(self, at: int) -> float:
        text = self._bytes()
        if not _FLOAT.fullmatch(text):
            raise Refused(f"Marshal float at byte {at} is not a number Ruby writes: {text[:32]!r}")
        return float(text)

    def _bignum(self, at: int) -> int:
        sign = self._byte()
        if sign not in (b"+", b"-"):
            raise Refused(f"Marshal bignum at byte {at} has the sign byte {sign!r}")
        shorts = self._long()
        if not 0 <= shorts * 2 <= _MAX_INT_BITS // 8:
            raise Refused(f"Marshal bignum at byte {at} has {shorts} 16-bit digits; at most 64 bits are read")
        if self.pos + 2 * shorts > len(self.data):
            raise Refused(f"Marshal bignum at byte {at} is truncated")
        magnitude = int.from_bytes(self.data[self.pos : self.pos + 2 * shorts], "little")
        self.pos += 2 * shorts
        return magnitude if sign == b"+" else -magnitude

    def _ivar(self, at: int) -> object:
        """A String or Symbol with instance variables: only its encoding (E or encoding) is accepted."""
        inner = self._byte()
        if inner == b'"':
            raw = self._bytes()
            index = self._register(raw)
        elif inner == b":":
            # Ruby numbers the symbol before the symbols of its instance variables.
            raw, index, slot = self._bytes(), -1, len(self.symbols)
            self.symbols.append("")
        else:
            name = _NAMES.get(inner, f"the type tag {inner!r}")
            raise Refused(f"Marshal data holds {name} with instance variables at byte {at}; only plain values are read")
        encoding = self._encoding(at)
        text: str | None = None
        if encoding in ("UTF-8", "US-ASCII"):
            try:
                text = raw.decode("utf-8" if encoding == "UTF-8" else "ascii")
            except UnicodeDecodeError:
                text = None
        if index < 0:  # a symbol: always a name, so it must decode
            if text is None:
                raise Refused(f"Marshal symbol at byte {at} does not decode as {encoding}")
            self.symbols[slot] = text
            return text
        value: object = raw if text is None else text
        self.objects[index] = value
        self.shapes[index] = (1, 0)
        return value

    def _encoding(self, at: int) -> str:
        count = self._long()
        if count != 1:
            raise Refused(f"Marshal value at byte {at} has {count} instance variables; only its encoding is read")
        name_at = self.pos
        tag = self._byte()
        if tag == b":":
            name = self._symbol()
        elif tag == b";":
            name = self._symlink(name_at)
        else:
            raise Refused(f"Marshal instance variable name at byte {name_at} is not a symbol")
        value_at = self.pos
        if name == "E":
            flag = self._byte()
            if flag not in (b"T", b"F"):
                raise Refused(f"Marshal encoding flag at byte {value_at} is {flag!r}, not T or F")
            return "UTF-8" if flag == b"T" else "US-ASCII"
        if name == "encoding":
            tag = self._byte()
            if tag == b'"':
                named: object = self._bytes()
                self.shapes[self._register(named)] = (1, 0)
            elif tag == b"@":  # Ruby links the second string of an encoding to the first one's name
                named, _ = self._link(value_at, MAX_DEPTH, count=False)
            else:
                raise Refused(f"Marshal encoding name at byte {value_at} is not a string")
            if isinstance(named, str):
                return named
            if isinstance(named, bytes):
                return named.decode("ascii", "replace")
            raise Refused(f"Marshal encoding name at byte {value_at} links to a {type(named).__name__}")
        raise Refused(f"Marshal instance variable {shown(name)} at byte {name_at}; only E and encoding are read")
