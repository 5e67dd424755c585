"""A reader of Java Object Serialization streams (protocol version 5) that loads no class and runs no code.

Java deserialization runs the ``readObject`` of whatever class the stream names, which is how gadget chains
execute code; this reader names the classes it accepts (``ALLOWED``, kept with what each class's data becomes
in ``java_classes``) and refuses every other one before reading its data. It walks the stream's grammar
(objects, class descriptors with their super classes, strings, arrays, enums, block data, back references)
and turns what it read into plain values:

* an object becomes a ``dict`` of its serialized fields (those of every class of its chain, names as
  serialized; a subclass field hides a super class field of the same name) plus ``"@class"``, its class name;
* the collections Spring Security keeps become ``list`` (lists and sets, in stream order) or ``dict`` (maps with
  ``str`` keys), read from the elements their ``writeObject`` wrote; the ``Collections`` wrappers (unmodifiable,
  singleton, empty) become what they wrap;
* boxed numbers and booleans become ``int``, ``float``, ``bool``; a ``Character`` or ``char`` a one-character
  ``str``; ``String`` a ``str``; ``byte[]`` ``bytes``; other arrays ``list``; an enum constant its name;
  ``java.time.Instant`` its epoch seconds as a ``float``.

A value referenced twice (a back reference) is the same Python object twice; its elements and depth count at
every place it is referenced, so the bounds hold for the tree a consumer walks. A reference to an object still
being read (a cycle) is refused. Strings are decoded from Java's modified UTF-8 as Java decodes them; a lone
surrogate is refused (no identity needs one, and it would not survive UTF-8).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sidecar.core.session import shown
from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats.java_classes import (
    ALLOWED,
    ENUMS,
    PRIMITIVES,
    SPRING_CLASSES,
    SUPER_ONLY,
    Block,
    JavaObject,
    check_class,
    resolve,
    shown_class,
)

# What other modules import from here; the allowlist itself lives in java_classes.
__all__ = ["ALLOWED", "SPRING_CLASSES", "check_class", "decode_modified_utf8", "loads", "resolve", "shown_class"]


_MAGIC = b"\xac\xed\x00\x05"
TC_NULL, TC_REFERENCE, TC_CLASSDESC, TC_OBJECT, TC_STRING, TC_ARRAY = 0x70, 0x71, 0x72, 0x73, 0x74, 0x75
TC_CLASS, TC_BLOCKDATA, TC_ENDBLOCKDATA, TC_RESET, TC_BLOCKDATALONG = 0x76, 0x77, 0x78, 0x79, 0x7A
TC_EXCEPTION, TC_LONGSTRING, TC_PROXYCLASSDESC, TC_ENUM = 0x7B, 0x7C, 0x7D, 0x7E
_BASE_HANDLE = 0x7E0000
SC_WRITE_METHOD, SC_SERIALIZABLE, SC_EXTERNALIZABLE, SC_BLOCK_DATA, SC_ENUM = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass
class _Desc:
    name: str
    flags: int
    fields: tuple[tuple[str, str], ...]  # (name, type code: a primitive letter, "L" or "[")
    super: _Desc | None = None

    def chain(self) -> list[_Desc]:
        """Its classes from the topmost super class down, the order their data is written in."""
        out: list[_Desc] = []
        desc: _Desc | None = self
        while desc is not None:
            if len(out) >= MAX_DEPTH:  # a back reference can make a chain a loop
                raise Refused(f"Java stream: {self.name}'s class chain loops or is longer than {MAX_DEPTH}")
            out.append(desc)
            desc = desc.super
        return out[::-1]


class _Building:
    """The handle of an object, array or enum still being read: a reference to it is a cycle."""


_BUILDING = _Building()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.handles: list[object] = []
        self.weights: list[tuple[int, int]] = []  # per handle: (elements, height) of its value
        self.elements = 0
        self.reached = 0  # the deepest level reached so far, for the heights of handles

    # ------------------------------------------------------------------------------------------ primitives

    def take(self, n: int) -> bytes:
        if n < 0 or n > len(self.data) - self.pos:
            raise Refused(f"Java stream: {n} bytes declared at offset {self.pos}, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> object:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def utf(self, length: int) -> str:
        return decode_modified_utf8(self.take(length))

    def count(self, n: int = 1) -> None:
        self.elements += n
        if self.elements > MAX_ELEMENTS:
            raise Refused(f"Java stream: more than {MAX_ELEMENTS} elements")

    def new_handle(self, value: object) -> int:
        if len(self.handles) >= MAX_ELEMENTS:
            raise Refused(f"Java stream: more than {MAX_ELEMENTS} handles")
        self.handles.append(value)
        self.weights.append((1, 0))
        return len(self.handles) - 1

    def handle(self) -> int:
        index = int.from_bytes(self.take(4), "big") - _BASE_HANDLE
        if not 0 <= index < len(self.handles):
            raise Refused(f"Java stream: reference to unknown handle {index + _BASE_HANDLE:#x}")
        return index

    # ------------------------------------------------------------------------------------------ contents

    def content(self, depth: int) -> object:
        """One value where an object is expected (a field, an array or annotation element, the top level)."""
        if depth > MAX_DEPTH:
            raise Refused(f"Java stream: nested deeper than {MAX_DEPTH}")
        self.reached = max(self.reached, depth)
        self.count()
        tc = self.u8()
        if tc == TC_NULL:
            return None
        if tc == TC_REFERENCE:
            return self.reference(depth)
        if tc in (TC_STRING, TC_LONGSTRING):
            return self.string(tc)
        start_elements, start_reached = self.elements, self.reached
        self.reached = depth
        if tc == TC_OBJECT:
            value, index = self.new_object(depth)
        elif tc == TC_ARRAY:
            value, index = self.array(depth)
        elif tc == TC_ENUM:
            value, index = self.enum()
        elif tc in (TC_CLASSDESC, TC_PROXYCLASSDESC, TC_CLASS):
            raise Refused(f"Java stream: class or class descriptor ({tc:#x}) where a value is expected")
        elif tc == TC_RESET:
            raise Refused("Java stream: a reset inside an object")
        else:
            raise Refused(f"Java stream: type code {tc:#x} where a value is expected at offset {self.pos - 1}")
        self.handles[index] = value
        self.weights[index] = (self.elements - start_elements + 1, self.reached - depth)
        self.reached = max(self.reached, start_reached)
        return value

    def reference(self, depth: int) -> object:
        index = self.handle()
        value = self.handles[index]
        if value is _BUILDING:
            raise Refused("Java stream: a reference to an object still being read (a cycle)")
        if isinstance(value, _Desc):
            raise Refused("Java stream: a class descriptor where a value is expected")
        elements, height = self.weights[index]
        self.count(elements - 1)
        if depth + height > MAX_DEPTH:
            raise Refused(f"Java stream: a reference nests deeper than {MAX_DEPTH}")
        self.reached = max(self.reached, depth + height)
        return value

    def string(self, tc: int) -> str:
        length = self.u16() if tc == TC_STRING else int.from_bytes(self.take(8), "big")
        text = self.utf(length)
        self.new_handle(text)
        return text

    def field_type(self) -> None:
        """The class name of an object field's type: a string, possibly a back reference (not checked)."""
        tc = self.u8()
        if tc in (TC_STRING, TC_LONGSTRING):
            self.string(tc)
        elif tc == TC_REFERENCE:
            if not isinstance(self.handles[self.handle()], str):
                raise Refused("Java stream: a field type that is not a string")
        else:
            raise Refused(f"Java stream: type code {tc:#x} for a field type")

    def class_desc(self) -> _Desc | None:
        """A class descriptor and its super classes (read in a loop: a chain cannot nest the reader)."""
        descs: list[_Desc] = []
        top: _Desc | None = None
        while True:
            tc = self.u8()
            if tc == TC_NULL:
                break
            if tc == TC_REFERENCE:
                found = self.handles[self.handle()]
                if not isinstance(found, _Desc):
                    raise Refused("Java stream: a reference to something other than a class descriptor")
                if descs:
                    descs[-1].super = found
                else:
                    top = found
                break
            if tc == TC_PROXYCLASSDESC:
                raise Refused("Java stream: proxy classes are refused")
            if tc != TC_CLASSDESC:
                raise Refused(f"Java stream: type code {tc:#x} where a class descriptor is expected")
            if len(descs) >= MAX_DEPTH:
                raise Refused(f"Java stream: a class chain longer than {MAX_DEPTH}")
            desc = self.new_desc()
            if descs:
                descs[-1].super = desc
            else:
                top = desc
            descs.append(desc)
        return top

    def new_desc(self) -> _Desc:
        name = self.utf(self.u16())
        check_class(name)
        self.take(8)  # serialVersionUID: the accepted classes are known by name, whatever their version
        desc = _Desc(name, 0, ())
        self.new_handle(desc)
        desc.flags = self.u8()
        fields: list[tuple[str, str]] = []
        seen: set[str] = set()
        for _ in range(self.u16()):
            code = chr(self.u8())
            fname = self.utf(self.u16())
            if not fname or fname == "@class" or fname in seen:
                raise Refused(f"Java stream: field name {shown(fname)} in {name}")
            seen.add(fname)
            if code in ("L", "["):
                self.field_type()
            elif code not in PRIMITIVES:
                raise Refused(f"Java stream: field type code {code!r} in {name}")
            fields.append((fname, code))
            self.count()
        desc.fields = tuple(fields)
        if self.u8() != TC_ENDBLOCKDATA:
            raise Refused(f"Java stream: class annotations are refused ({name})")
        return desc

    def new_object(self, depth: int) -> tuple[object, int]:
        desc = self.class_desc()
        if desc is None:
            raise Refused("Java stream: an object without a class")
        if desc.name.startswith("[") or desc.flags & SC_ENUM or desc.name in SUPER_ONLY:
            raise Refused(f"Java stream: an object of class {desc.name}")
        index = self.new_handle(_BUILDING)
        obj = JavaObject(desc.name)
        if desc.flags & SC_EXTERNALIZABLE:
            # Only the class's own writeExternal data is written; without block data its length is unknowable.
            if not desc.flags & SC_BLOCK_DATA:
                raise Refused(f"Java stream: externalizable {desc.name} without block data")
            obj.extra[desc.name] = self.annotation(depth)
            return resolve(obj), index
        for cls in desc.chain():
            if not cls.flags & SC_SERIALIZABLE or cls.flags & SC_EXTERNALIZABLE:
                raise Refused(f"Java stream: {cls.name} in {desc.name}'s chain is not serializable")
            self.class_data(cls, obj, depth)
        return resolve(obj), index

    def class_data(self, cls: _Desc, obj: JavaObject, depth: int) -> None:
        # Java writes every primitive field first, then the object fields, each group in descriptor order.
        for fname, code in cls.fields:
            if code in PRIMITIVES:
                fmt, convert = PRIMITIVES[code]
                obj.fields[fname] = convert(self.unpack(fmt))
        for fname, code in cls.fields:
            if code not in PRIMITIVES:
                obj.fields[fname] = self.content(depth + 1)
        if cls.flags & SC_WRITE_METHOD:
            obj.extra[cls.name] = self.annotation(depth)

    def annotation(self, depth: int) -> list[object]:
        """What a ``writeObject`` wrote after its fields: block data (adjacent blocks merged) and values."""
        items: list[object] = []
        while True:
            tc = self.data[self.pos] if self.pos < len(self.data) else -1
            if tc in (TC_BLOCKDATA, TC_BLOCKDATALONG):
                self.pos += 1
                length = self.u8() if tc == TC_BLOCKDATA else int.from_bytes(self.take(4), "big", signed=True)
                chunk = self.take(length)
                block = items[-1] if items else None
                if not isinstance(block, Block):
                    self.count()
                    block = Block()
                    items.append(block)
                block.data += chunk
            elif tc == TC_ENDBLOCKDATA:
                self.pos += 1
                return items
            else:
                items.append(self.content(depth + 1))

    def array(self, depth: int) -> tuple[object, int]:
        desc = self.class_desc()
        if desc is None or not desc.name.startswith("[") or len(desc.name) < 2:
            raise Refused("Java stream: an array without an array class")
        index = self.new_handle(_BUILDING)
        size = int.from_bytes(self.take(4), "big", signed=True)
        code = desc.name[1]
        if code == "B":
            return self.take(size), index
        if code in PRIMITIVES:
            fmt, convert = PRIMITIVES[code]
            width = struct.calcsize(fmt)
            raw = self.take(size * width)  # checks the size against the bytes left before allocating
            self.count(size)
            return [convert(v) for (v,) in struct.iter_unpack(fmt, raw)], index
        if size < 0 or size > len(self.data) - self.pos:  # every element takes at least one byte
            raise Refused(f"Java stream: array of {size} elements with {len(self.data) - self.pos} bytes left")
        return [self.content(depth + 1) for _ in range(size)], index

    def enum(self) -> tuple[object, int]:
        desc = self.class_desc()
        if desc is None or desc.name not in ENUMS:
            raise Refused(f"Java stream: enum class {desc and desc.name} is not accepted")
        index = self.new_handle(_BUILDING)
        tc = self.u8()
        if tc not in (TC_STRING, TC_LONGSTRING):
            raise Refused("Java stream: an enum constant without a name")
        return self.string(tc), index


def decode_modified_utf8(raw: bytes) -> str:
    """Java's modified UTF-8 as ``DataInputStream.readUTF`` decodes it, surrogate pairs joined."""
    if raw.isascii():
        return raw.decode("ascii")
    units: list[int] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c < 0x80:
            units.append(c)
            i += 1
        elif c >> 5 == 0b110 and i + 1 < n and raw[i + 1] >> 6 == 0b10:
            units.append((c & 0x1F) << 6 | raw[i + 1] & 0x3F)
            i += 2
        elif c >> 4 == 0b1110 and i + 2 < n and raw[i + 1] >> 6 == 0b10 and raw[i + 2] >> 6 == 0b10:
            units.append((c & 0x0F) << 12 | (raw[i + 1] & 0x3F) << 6 | raw[i + 2] & 0x3F)
            i += 3
        else:
            raise Refused(f"Java stream: malformed modified UTF-8 at byte {i} of a string")
    try:
        return struct.pack(f">{len(units)}H", *units).decode("utf-16-be")
    except UnicodeDecodeError as exc:
        raise Refused("Java stream: a string with a lone surrogate") from exc


def loads(data: bytes) -> object:
    """The one object a Java serialization stream holds, as plain values; ``Refused`` for anything else."""
    data = bytes(data)
    if len(data) > MAX_INPUT_BYTES:
        raise Refused(f"Java stream: {len(data)} bytes, over {MAX_INPUT_BYTES}")
    if not data.startswith(_MAGIC):
        raise Refused("Java stream: no serialization header (0xACED0005)")
    reader = _Reader(data)
    reader.pos = len(_MAGIC)
    while reader.pos < len(data) and data[reader.pos] == TC_RESET:
        reader.pos += 1
    value = reader.content(1)
    if reader.pos != len(data):
        raise Refused(f"Java stream: {len(data) - reader.pos} bytes after the object")
    return value
