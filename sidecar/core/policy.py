"""Route policy: which paths are public and which need roles.

A path can mean different things to the policy and to the upstream: one upstream decodes ``%2F`` and resolves
``..`` afterwards, another keeps ``%2F`` inside a segment, a Java one drops ``;jsessionid=`` path parameters.
So the policy matches every such reading of the path (``readings``) and applies the strictest result: a route
is public only if every reading is public, and needs the roles of every reading. ``/public%2F..%2Fadmin``,
``/%61dmin``, ``/admin;x=1``, ``/admin/%ff`` and, for an upstream that decodes twice, ``/public/%252e%252e/admin``
all keep the ``/admin`` rule; a path with escapes that do not decode as UTF-8 (once or twice) is never public.

Prefixes match whole segments: ``/public`` covers ``/public`` and ``/public/x`` but not ``/publicity``. The
longest matching prefix wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from sidecar.core.memo import keep


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    public: bool = False
    roles: tuple[str, ...] = ()


DEFAULT_ROUTE = Route(prefix="/")
_AMBIGUOUS = ("%", ";", "\\")


def _resolve(path: str, *, strip_params: bool = False) -> str:
    """Drop empty and '.' segments and apply '..' (never above the root); always starts with '/'."""
    segments: list[str] = []
    for raw in path.split("/"):
        segment = raw.split(";", 1)[0] if strip_params else raw
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def _path_part(path: str) -> str:
    return path.split("?", 1)[0].split("#", 1)[0]


def canonical_path(path: str) -> str:
    """The path as an upstream that decodes everything sees it: query dropped, escapes decoded (undecodable
    bytes become U+FFFD, never an error), backslashes as slashes, dot and empty segments resolved."""
    decoded = unquote(_path_part(path), errors="replace").replace("\\", "/")
    return _resolve(decoded)


def readings(path: str) -> tuple[frozenset[str], bool]:
    """Every canonical form an upstream might route ``path`` by (one, for an unambiguous path), and whether
    the path holds escapes that are not UTF-8 (which some servers read in ways no reading here can foresee)."""
    part = _path_part(path)
    if not any(ch in part for ch in _AMBIGUOUS):
        return frozenset((_resolve(part),)), False
    decoded = unquote(part, errors="replace").replace("\\", "/")
    lossy = decoded.count("\ufffd") > part.count("\ufffd")
    forms = {_resolve(part), _resolve(decoded), _resolve(decoded, strip_params=True)}
    if "%" in decoded:
        # An upstream that decodes twice (Java and IIS stacks do) reads %252e%252e as "..": that reading counts too.
        twice = unquote(decoded, errors="replace").replace("\\", "/")
        lossy = lossy or twice.count("\ufffd") > decoded.count("\ufffd")
        forms.update((_resolve(twice), _resolve(twice, strip_params=True)))
    return frozenset(forms), lossy


MAX_MATCHED_TARGETS = 4096
MAX_MATCHED_TARGET_LENGTH = 512


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    # Sorted longest prefix first so the first hit is the most specific rule.
    routes: tuple[Route, ...]
    # The rule of each request target seen last: a pure function of the target, asked on every Check, while a
    # service sees few distinct targets (bounded: full, it starts over; a dict is safe across handler threads).
    _matched: dict[str, Route] = field(default_factory=dict, init=False, compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, routes: Iterable[Route]) -> RoutePolicy:
        canonical = [Route(canonical_path(r.prefix), r.public, tuple(r.roles)) for r in routes]
        canonical.sort(key=lambda r: len(r.prefix), reverse=True)
        return cls(tuple(canonical))

    def _match_canonical(self, canonical: str) -> Route:
        for route in self.routes:
            prefix = route.prefix
            if prefix in ("/", canonical) or canonical.startswith(prefix + "/"):
                return route
        return DEFAULT_ROUTE

    def match(self, path: str) -> Route:
        route = self._matched.get(path)
        if route is None:
            route = self._match(path)
            if len(path) <= MAX_MATCHED_TARGET_LENGTH:  # bounded in bytes too: a long target is matched each time
                keep(self._matched, path, route, MAX_MATCHED_TARGETS)
        return route

    def _match(self, path: str) -> Route:
        forms, lossy = readings(path)
        matched = {self._match_canonical(form) for form in forms}
        if lossy:
            # An undecodable path is never public, and keeps the roles of every rule it might fall under.
            matched.add(DEFAULT_ROUTE)
        if len(matched) == 1:
            return matched.pop()
        return _strictest(matched)

    def match_all(self, paths: Iterable[str]) -> Route:
        """The strictest rule over several paths that may each be the request's (forward-auth headers that
        disagree): public only if every one is, with the roles of every one."""
        matched = {self.match(path) for path in paths}
        return matched.pop() if len(matched) == 1 else _strictest(matched)


def _strictest(routes: Iterable[Route]) -> Route:
    ordered = sorted(routes, key=lambda r: (r.public, -len(r.prefix)))
    roles = tuple(dict.fromkeys(role for route in ordered for role in route.roles))
    return Route(prefix=ordered[0].prefix, public=all(r.public for r in ordered), roles=roles)


def missing_roles(route: Route, roles: Iterable[str]) -> tuple[str, ...]:
    held = set(roles)
    return tuple(role for role in route.roles if role not in held)
