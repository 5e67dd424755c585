"""Spring Session Data Redis: a session's hash, its security context, and who is logged in.

Spring Session (``RedisSessionRepository`` and ``RedisIndexedSessionRepository``, mapped by
``RedisSessionMapper``) keeps a session under ``<namespace>:sessions:<id>`` (namespace ``spring:session`` by
default) as a hash: ``creationTime`` and ``lastAccessedTime`` (a Long, epoch milliseconds), ``maxInactiveInterval``
(an Integer, seconds; negative: never expires) and ``sessionAttr:<name>`` per attribute. Field names are plain
strings; every value is written by the configured ``RedisSerializer``: a Java serialization stream
(``JdkSerializationRedisSerializer``, the default: read by ``java.loads``) or JSON with Jackson's default typing
(``GenericJackson2JsonRedisSerializer`` with Spring Security's Jackson modules). An empty value is ``null``.
Only the three times and the security context attribute are read: other attributes may hold any class and are
never parsed.

Both serializers give the context the same plain shape, the one ``java.loads`` gives the JDK form (JSON is
normalized to it): an object is a ``dict`` of its Java fields plus ``"@class"``, collections are lists, maps are
dicts, an Instant is epoch seconds (``float``). For example::

    {"@class": "org.springframework.security.core.context.SecurityContextImpl",
     "authentication": {"@class": "...UsernamePasswordAuthenticationToken", "authenticated": True,
                        "principal": {"@class": "org.springframework.security.core.userdetails.User",
                                      "username": "user", "authorities": [...], ...},
                        "authorities": [{"@class": "...SimpleGrantedAuthority", "role": "ROLE_USER"}],
                        "credentials": None, "details": {...}}}

so a path like ``authentication.principal.username`` means the same for both. The JSON form differs from the
Java fields in a few places, each normalized here: Jackson's ``["java.util.ArrayList", [...]]`` wrappers and
``{"@class": "java.util...Map", ...}`` maps become lists and dicts; ``SimpleGrantedAuthority`` writes its
``role`` as ``authority``; ``OAuth2AuthenticationToken`` omits ``authenticated`` (its JSON creator always makes
an authenticated token); ``DefaultOidcUser`` omits ``attributes`` (Java collects them from the userinfo claims,
then the ID token's, which win).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, Refused, java
from sidecar.sources.formats import json as bounded_json

_SEC = "org.springframework.security."
CONTEXT_CLASSES = frozenset({_SEC + "core.context.SecurityContextImpl", _SEC + "core.context.TransientSecurityContext"})
_ANONYMOUS = _SEC + "authentication.AnonymousAuthenticationToken"
# The concrete Authentication classes of the accepted set: an authentication of any other class is refused, so
# that nothing else (a map holding "@class", an abstract class) is read by the token rules.
_AUTHENTICATIONS = frozenset(
    {
        _SEC + "authentication.UsernamePasswordAuthenticationToken",
        _SEC + "authentication.RememberMeAuthenticationToken",
        _SEC + "authentication.TestingAuthenticationToken",
        _SEC + "web.authentication.preauth.PreAuthenticatedAuthenticationToken",
        _SEC + "oauth2.client.authentication.OAuth2AuthenticationToken",
        _ANONYMOUS,
    }
)
_USER = _SEC + "core.userdetails.User"
_OAUTH2_USER = _SEC + "oauth2.core.user.DefaultOAuth2User"
_OIDC_USER = _SEC + "oauth2.core.oidc.user.DefaultOidcUser"
_SIMPLE_AUTHORITY = _SEC + "core.authority.SimpleGrantedAuthority"
_AUTHORITIES = frozenset(
    {
        _SIMPLE_AUTHORITY,
        _SEC + "core.authority.FactorGrantedAuthority",
        _SEC + "oauth2.core.user.OAuth2UserAuthority",
        _SEC + "oauth2.core.oidc.user.OidcUserAuthority",
    }
)

# Jackson's type ids for what becomes a list or a dict (default typing writes the runtime class).
_UNMOD = "java.util.Collections$Unmodifiable"
_JSON_LISTS = frozenset(
    {
        "java.util.ArrayList", "java.util.LinkedList", "java.util.HashSet", "java.util.LinkedHashSet",
        "java.util.TreeSet", "java.util.Arrays$ArrayList", "java.util.Collections$EmptyList",
        "java.util.Collections$EmptySet", "java.util.Collections$SingletonList", "java.util.Collections$SingletonSet",
        _UNMOD + "Collection", _UNMOD + "List", _UNMOD + "RandomAccessList", _UNMOD + "Set", _UNMOD + "SortedSet",
    }
)  # fmt: skip
_JSON_MAPS = frozenset(
    {
        "java.util.HashMap", "java.util.LinkedHashMap", "java.util.TreeMap", "java.util.Collections$EmptyMap",
        "java.util.Collections$SingletonMap", _UNMOD + "Map", _UNMOD + "SortedMap",
    }
)  # fmt: skip
_JSON_SCALARS: dict[str, tuple[type, ...]] = {
    "java.time.Instant": (int, float),
    "java.lang.Long": (int,),
    "java.lang.Integer": (int,),
}

CREATION_TIME, LAST_ACCESSED_TIME, MAX_INACTIVE_INTERVAL = "creationTime", "lastAccessedTime", "maxInactiveInterval"
ATTRIBUTE_PREFIX = "sessionAttr:"


@dataclass(frozen=True)
class SpringSession:
    creation_ms: int
    last_accessed_ms: int
    max_inactive_seconds: int  # negative: the session never expires
    context: object | None  # the security context attribute as a plain tree (see the module's docstring), or None


@dataclass(frozen=True)
class SpringIdentity:
    name: str
    email: str | None
    authorities: tuple[str, ...]


def read_session(
    fields: Mapping[bytes, bytes],
    serializer: Literal["jdk", "json"],
    context_attribute: str = "SPRING_SECURITY_CONTEXT",
) -> SpringSession:
    """A session from its hash's fields as Redis returns them; ``Refused`` when a time is missing or not an
    integer, or a value does not read (as Spring Session's own mapper fails on the same hash)."""

    def value(name: str) -> object:
        raw = fields.get(name.encode())
        # RedisSerializer's null is the empty value.
        return None if raw is None or raw == b"" else read_context(raw, serializer)

    times = []
    for name, bits in ((CREATION_TIME, 64), (LAST_ACCESSED_TIME, 64), (MAX_INACTIVE_INTERVAL, 32)):
        number = value(name)
        if type(number) is not int:
            raise Refused(f"Spring session: {name} is {type(number).__name__}, not an integer")
        if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
            raise Refused(f"Spring session: {name} {number} is out of range")
        times.append(number)
    return SpringSession(times[0], times[1], times[2], value(ATTRIBUTE_PREFIX + context_attribute))


def read_context(raw: bytes, serializer: Literal["jdk", "json"]) -> object:
    """One hash value as the configured RedisSerializer wrote it (the security context, or a boxed time)."""
    if serializer == "jdk":
        return java.loads(raw)
    if serializer == "json":
        return loads_json(raw)
    raise Refused(f"Spring session: unknown serializer {serializer!r}")


def expires_at_ms(session: SpringSession) -> int | None:
    """When the session expires (epoch ms), as Spring Session computes it; None when it never does."""
    if session.max_inactive_seconds < 0:
        return None
    return session.last_accessed_ms + session.max_inactive_seconds * 1000


# ---------------------------------------------------------------------------------------------- identity


def identity(context: object | None) -> SpringIdentity | None:
    """Who the security context says is logged in, by Spring Security's rules: None for no context, no
    authentication, an anonymous token or a token not authenticated; ``Refused`` for what is not a context or
    whose name cannot be told."""
    if context is None:
        return None
    if _cls(context) not in CONTEXT_CLASSES:
        raise Refused(f"Spring context: {_class_of(context)} is not a security context")
    assert isinstance(context, dict)  # _cls() found its class
    auth = context.get("authentication")
    if auth is None:
        return None
    auth_class = _cls(auth)
    if auth_class not in _AUTHENTICATIONS:
        raise Refused(f"Spring context: an authentication of {_class_of(auth)}")
    assert isinstance(auth, dict)
    if auth_class == _ANONYMOUS or auth.get("authenticated") is not True:
        return None
    principal = auth.get("principal")
    authorities = auth.get("authorities")
    if not isinstance(authorities, list):
        raise Refused(f"Spring context: authorities of {_class_of(authorities)}")
    email = None
    if isinstance(principal, dict) and _cls(principal) in (_OAUTH2_USER, _OIDC_USER):
        found = _attributes(principal).get("email")
        email = found if isinstance(found, str) and found else None
    return SpringIdentity(_name(principal), email, tuple(_authority(a) for a in authorities))


def _cls(value: object) -> str | None:
    """The class of an object as read, or None for anything else (a "@class" that is no string included: a
    membership test on a list or dict would raise TypeError)."""
    if isinstance(value, dict):
        cls = value.get("@class")
        if type(cls) is str:
            return cls
    return None


def _class_of(value: object) -> str:
    if isinstance(value, dict):
        return _quoted_class(value.get("@class"))
    return "null" if value is None else f"a {type(value).__name__}"


def _quoted_class(cls: object) -> str:
    if type(cls) is str:
        return f"class {java.shown_class(cls)}"
    return "no class" if cls is None else f"a class name of type {type(cls).__name__}"


def _attributes(principal: dict[str, Any]) -> dict[str, Any]:
    attributes = principal.get("attributes")
    if not isinstance(attributes, dict):
        raise Refused(f"Spring context: {principal['@class']} without attributes")
    return attributes


def _name(principal: object) -> str:
    """``Authentication.getName()``: a UserDetails' username, an OAuth2 user's name attribute, a string."""
    if isinstance(principal, str):
        name: object = principal
    elif isinstance(principal, dict) and _cls(principal) == _USER:
        name = principal.get("username")
    elif isinstance(principal, dict) and _cls(principal) in (_OAUTH2_USER, _OIDC_USER):
        key = principal.get("nameAttributeKey")
        name = _attributes(principal).get(key) if isinstance(key, str) else None
        if type(name) is int:  # getName() is the attribute's toString()
            name = str(name)
    else:
        raise Refused(f"Spring context: a principal of {_class_of(principal)} (no name this reader knows)")
    if not isinstance(name, str) or not name:
        raise Refused(f"Spring context: an authenticated principal without a name ({_class_of(principal)})")
    return name


def _authority(item: object) -> str:
    if _cls(item) not in _AUTHORITIES:
        raise Refused(f"Spring context: an authority of {_class_of(item)}")
    assert isinstance(item, dict)
    value = item.get("role" if item["@class"] == _SIMPLE_AUTHORITY else "authority")
    if not isinstance(value, str) or not value:
        raise Refused(f"Spring context: {item['@class']} without its authority string")
    return value


# ---------------------------------------------------------------------------------------------- JSON


def loads_json(data: bytes) -> object:
    """A value written by GenericJackson2JsonRedisSerializer, normalized to the shape ``java.loads`` gives the
    same object; ``Refused`` for a class outside the accepted set, an untyped object, or JSON outside the bounded
    subset ``formats.json`` parses (size, nesting, NaN, duplicate keys, lone surrogates, 64-bit integers)."""
    return _Normalizer().value(bounded_json.loads(data), 1)


class _Normalizer:
    def __init__(self) -> None:
        self.elements = 0

    def value(self, node: object, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise Refused(f"Spring JSON: nested deeper than {MAX_DEPTH}")
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise Refused(f"Spring JSON: more than {MAX_ELEMENTS} elements")
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return self.wrapped(node, depth)
        assert isinstance(node, dict)  # what json.loads makes: null, bool, numbers, str, list, dict
        cls = node.get("@class")
        if type(cls) is not str or (cls not in _JSON_MAPS and cls not in java.SPRING_CLASSES):
            raise Refused(f"Spring JSON: an object of {_quoted_class(cls)} is not accepted")
        obj = {k: self.value(v, depth + 1) for k, v in node.items() if k != "@class"}
        if cls in _JSON_MAPS:
            return obj
        obj["@class"] = cls
        return _as_java_fields(obj)

    def wrapped(self, node: list[object], depth: int) -> object:
        """Jackson's ``[type id, value]`` for a collection, an array or a typed scalar in an untyped place."""
        match node:
            case [str(cls), list(items)] if cls in _JSON_LISTS:
                return [self.value(item, depth + 1) for item in items]
            case [str(cls), int() | float() as number] if cls in _JSON_SCALARS and not isinstance(number, bool):
                if not isinstance(number, _JSON_SCALARS[cls]):
                    raise Refused(f"Spring JSON: {cls} of {number!r}")
                return float(number) if cls == "java.time.Instant" else number
        head = node[0] if node else None
        shown_head = (
            java.shown_class(head) if type(head) is str else "null" if head is None else f"a {type(head).__name__}"
        )
        raise Refused(f"Spring JSON: an array that is no accepted type wrapper (type id {shown_head})")


def _as_java_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The few places where Spring Security's JSON form differs from the class's serialized fields."""
    cls = obj["@class"]
    if cls == _SIMPLE_AUTHORITY and "role" not in obj and "authority" in obj:
        obj["role"] = obj.pop("authority")
    elif cls == _SEC + "oauth2.client.authentication.OAuth2AuthenticationToken" and "authenticated" not in obj:
        obj["authenticated"] = True
    elif cls == _OIDC_USER and "attributes" not in obj:
        claims: dict[str, Any] = {}
        for part in (obj.get("userInfo"), obj.get("idToken")):
            if isinstance(part, dict) and isinstance(part.get("claims"), dict):
                claims.update(part["claims"])
        obj["attributes"] = claims
    return obj
