"""The classes the Java stream reader accepts, and the plain value each one's written data becomes.

The reader (``sidecar.sources.formats.java``, whose docstring states the values) asks ``check_class`` of every
class descriptor before reading the class's data, and hands each object it read (its fields and its classes'
``writeObject`` data, a ``JavaObject``) to ``resolve``, which makes of it what the class's own ``readObject`` or
``readResolve`` would, for the accepted classes only: a Spring Security class a ``dict`` of its fields, a
collection the ``list`` or ``dict`` its ``writeObject`` wrote, a boxed value the number it holds.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.core.session import shown
from sidecar.sources.formats import Refused


def _char(unit: int) -> str:
    if 0xD800 <= unit <= 0xDFFF:
        raise Refused("Java stream: a char that is half a surrogate pair")
    return chr(unit)


# Primitive type codes: struct format and the plain value's converter.
PRIMITIVES: dict[str, tuple[str, Callable[[Any], object]]] = {
    "B": (">b", int), "S": (">h", int), "I": (">i", int), "J": (">q", int),
    "F": (">f", float), "D": (">d", float), "Z": (">?", bool), "C": (">H", _char),
}  # fmt: skip

# Classes whose fields become a dict, as written by Spring Security (6.2 to 7.2) for a security context.
SPRING_CLASSES = frozenset(
    {
        "org.springframework.security.core.context.SecurityContextImpl",
        "org.springframework.security.core.context.TransientSecurityContext",
        "org.springframework.security.authentication.AbstractAuthenticationToken",
        "org.springframework.security.authentication.UsernamePasswordAuthenticationToken",
        "org.springframework.security.authentication.RememberMeAuthenticationToken",
        # In no sample, but Spring's rules name it (an anonymous session has no identity): read, not refused.
        "org.springframework.security.authentication.AnonymousAuthenticationToken",
        "org.springframework.security.authentication.TestingAuthenticationToken",
        "org.springframework.security.web.authentication.preauth.PreAuthenticatedAuthenticationToken",
        "org.springframework.security.web.authentication.WebAuthenticationDetails",
        "org.springframework.security.core.userdetails.User",
        "org.springframework.security.core.userdetails.User$AuthorityComparator",
        "org.springframework.security.core.authority.SimpleGrantedAuthority",
        "org.springframework.security.core.authority.FactorGrantedAuthority",
        "org.springframework.security.oauth2.client.authentication.OAuth2AuthenticationToken",
        "org.springframework.security.oauth2.core.user.DefaultOAuth2User",
        "org.springframework.security.oauth2.core.user.OAuth2UserAuthority",
        "org.springframework.security.oauth2.core.oidc.user.DefaultOidcUser",
        "org.springframework.security.oauth2.core.oidc.user.OidcUserAuthority",
        "org.springframework.security.oauth2.core.oidc.OidcIdToken",
        "org.springframework.security.oauth2.core.oidc.OidcUserInfo",
        "org.springframework.security.oauth2.core.AbstractOAuth2Token",
    }
)
# Boxed values: the exact type their ``value`` field reads as.
_BOXED: dict[str, type] = {
    "java.lang.Long": int, "java.lang.Integer": int, "java.lang.Short": int, "java.lang.Byte": int,
    "java.lang.Double": float, "java.lang.Float": float, "java.lang.Boolean": bool, "java.lang.Character": str,
}  # fmt: skip
# Super classes that carry no data of their own here; an object of exactly one of them is refused.
SUPER_ONLY = frozenset({"java.lang.Number", "java.lang.Enum"})
# Element classes accepted in arrays only (``Arrays.asList`` keeps one; no object of these classes is read).
_ARRAY_ONLY = frozenset({"java.lang.Object", "java.lang.String"})
ENUMS: frozenset[str] = frozenset()  # no enum reaches a Spring Security context's serialized form


@dataclass
class JavaObject:
    """An object as read: its fields (every class merged) and each class's ``writeObject`` data by name."""

    name: str
    fields: dict[str, object] = field(default_factory=dict)
    extra: dict[str, list[object]] = field(default_factory=dict)  # Block and values, in stream order


class Block:
    """Primitive data a ``writeObject`` wrote (its blocks joined): kept apart from a ``byte[]`` value."""

    def __init__(self) -> None:
        self.data = bytearray()


# Java class names share long package prefixes (org.springframework.security. is 29 characters): cut at
# shown()'s 32 they could not be told apart, so a class name is quoted whole up to this length (every accepted
# name fits), and only a longer one is cut.
_SHOWN_CLASS_LENGTH = 100


def shown_class(name: str) -> str:
    """A class name as a message quotes it: repr'd, cut by ``shown()`` when longer than any real one."""
    return repr(name) if len(name) <= _SHOWN_CLASS_LENGTH else shown(name)


def check_class(name: str) -> None:
    """Refuse a class descriptor of a class outside the accepted set (arrays: by their element class)."""
    element = name.lstrip("[")
    dims = len(name) - len(element)
    if dims:
        if dims > 1:
            raise Refused(f"Java stream: class {shown_class(name)} is not accepted (multi-dimensional array)")
        if element in PRIMITIVES:
            return
        if element.startswith("L") and element.endswith(";"):
            element = element[1:-1]
        else:
            raise Refused(f"Java stream: class {shown_class(name)} is not accepted")
    if element not in ALLOWED and not (dims and element in _ARRAY_ONLY):
        raise Refused(f"Java stream: class {shown_class(element)} is not accepted")


class _Extra:
    """A cursor over a ``writeObject``'s data: primitives from its block data, values in order."""

    def __init__(self, obj: JavaObject, cls: str) -> None:
        if cls not in obj.extra:
            raise Refused(f"Java stream: {obj.name} without the data its writeObject writes")
        self.owner, self.items, self.i, self.off = obj.name, obj.extra[cls], 0, 0

    def read(self, n: int) -> bytes:
        item = self.items[self.i] if self.i < len(self.items) else None
        if not isinstance(item, Block) or len(item.data) - self.off < n:
            raise Refused(f"Java stream: {self.owner}'s writeObject data is short of primitive data")
        chunk = bytes(item.data[self.off : self.off + n])
        self.off += n
        if self.off == len(item.data):
            self.i, self.off = self.i + 1, 0
        return chunk

    def read_int(self) -> int:
        value: int = struct.unpack(">i", self.read(4))[0]
        return value

    def size(self, n: int | None = None) -> int:
        """A count of what follows: the one given (a field) or the next int."""
        n = self.read_int() if n is None else n
        if n < 0:
            raise Refused(f"Java stream: {self.owner} declares {n} elements")
        return n

    def value(self) -> object:
        if self.off or self.i >= len(self.items) or isinstance(self.items[self.i], Block):
            raise Refused(f"Java stream: {self.owner}'s writeObject data lacks a value")
        self.i += 1
        return self.items[self.i - 1]

    def values(self, n: int) -> list[object]:
        if n > len(self.items) - self.i:
            raise Refused(f"Java stream: {self.owner} declares {n} values, holds {len(self.items) - self.i}")
        return [self.value() for _ in range(n)]

    def end(self) -> None:
        if self.i != len(self.items):
            raise Refused(f"Java stream: {self.owner}'s writeObject data has more than it declares")


def _pairs(owner: str, flat: list[object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in zip(flat[::2], flat[1::2], strict=True):
        if not isinstance(key, str):
            raise Refused(f"Java stream: a {owner} key of type {type(key).__name__} (only strings are accepted)")
        if key == "@class":
            # The key that names an object's class in the plain tree: a map holding it could pose as a Spring
            # Security object (as field names, java.py refuses it).
            raise Refused(f"Java stream: a {owner} with the key '@class'")
        out[key] = value
    return out


def _typed(obj: JavaObject, name: str, kind: type) -> Any:
    value = obj.fields.get(name)
    if type(value) is not kind:  # exactly: a bool is no int here
        raise Refused(f"Java stream: {obj.name}.{name} is not a {kind.__name__}")
    return value


def _done(e: _Extra, value: object) -> object:
    e.end()
    return value


def _array_list(o: JavaObject) -> object:
    e = _Extra(o, "java.util.ArrayList")
    e.read_int()  # the capacity
    return _done(e, e.values(e.size(_typed(o, "size", int))))


def _hash_map(o: JavaObject) -> object:
    e = _Extra(o, "java.util.HashMap")
    e.read_int()  # the bucket count
    return _done(e, _pairs(o.name, e.values(2 * e.size())))


def _hash_set(o: JavaObject) -> object:
    e = _Extra(o, "java.util.HashSet")
    e.read(8)  # the capacity and the load factor
    return _done(e, e.values(e.size()))


def _tree_set(o: JavaObject) -> object:
    e = _Extra(o, "java.util.TreeSet")
    e.value()  # the comparator: only ever an accepted class, and the order is kept as written
    return _done(e, e.values(e.size()))


def _tree_map(o: JavaObject) -> object:
    e = _Extra(o, "java.util.TreeMap")
    return _done(e, _pairs(o.name, e.values(2 * e.size())))


def _linked_list(o: JavaObject) -> object:
    e = _Extra(o, "java.util.LinkedList")
    return _done(e, e.values(e.size()))


def _instant(o: JavaObject) -> object:
    e = _Extra(o, "java.time.Ser")
    kind, seconds, nanos = struct.unpack(">bqi", e.read(13))
    e.end()
    if kind != 2:  # java.time.Ser's type for an Instant: other java.time types are not accepted
        raise Refused(f"Java stream: java.time.Ser of type {kind}")
    return seconds + nanos / 1e9


_UNMOD = "java.util.Collections$Unmodifiable"
_COLLECTIONS: dict[str, Callable[[JavaObject], object]] = {
    "java.util.ArrayList": _array_list,
    "java.util.LinkedList": _linked_list,
    "java.util.HashMap": _hash_map,
    "java.util.LinkedHashMap": _hash_map,
    "java.util.HashSet": _hash_set,
    "java.util.LinkedHashSet": _hash_set,
    "java.util.TreeSet": _tree_set,
    "java.util.TreeMap": _tree_map,
    "java.util.Arrays$ArrayList": lambda o: _typed(o, "a", list),
    _UNMOD + "Collection": lambda o: _typed(o, "c", list),
    _UNMOD + "List": lambda o: _typed(o, "c", list),
    _UNMOD + "RandomAccessList": lambda o: _typed(o, "c", list),
    _UNMOD + "Set": lambda o: _typed(o, "c", list),
    _UNMOD + "SortedSet": lambda o: _typed(o, "c", list),
    _UNMOD + "Map": lambda o: _typed(o, "m", dict),
    _UNMOD + "SortedMap": lambda o: _typed(o, "m", dict),
    "java.util.Collections$SingletonList": lambda o: [o.fields.get("element")],
    "java.util.Collections$SingletonSet": lambda o: [o.fields.get("element")],
    "java.util.Collections$SingletonMap": lambda o: _pairs(o.name, [o.fields.get("k"), o.fields.get("v")]),
    "java.util.Collections$EmptyList": lambda o: [],
    "java.util.Collections$EmptySet": lambda o: [],
    "java.util.Collections$EmptyMap": lambda o: {},
    "java.time.Ser": _instant,
}
ALLOWED = frozenset(SPRING_CLASSES | _BOXED.keys() | SUPER_ONLY | ENUMS | _COLLECTIONS.keys())


def resolve(obj: JavaObject) -> object:
    """The plain value of an object as read (what its class's ``readObject``/``readResolve`` would make of it,
    for the accepted classes), refusing ``writeObject`` data that no reader here consumes."""
    if obj.name in _BOXED:
        return _typed(obj, "value", _BOXED[obj.name])
    if obj.name in _COLLECTIONS:
        return _COLLECTIONS[obj.name](obj)
    for cls, items in obj.extra.items():
        if items:
            raise Refused(f"Java stream: unexpected writeObject data for {cls}")
    return {**obj.fields, "@class": obj.name}
