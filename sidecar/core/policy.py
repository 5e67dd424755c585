"""Route policy: which paths are public and which need roles.

Matching works on a canonical path (query dropped, percent-decoding per segment, empty and dot segments
resolved), so ``/public/../admin`` or ``/%61dmin`` cannot borrow a laxer rule than the path the upstream serves.
Prefixes match whole segments: ``/public`` covers ``/public`` and ``/public/x`` but not ``/publicity``. The
longest matching prefix wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    public: bool = False
    roles: tuple[str, ...] = ()


DEFAULT_ROUTE = Route(prefix="/")


def canonical_path(path: str) -> str:
    """The path part of a request target, decoded and with dot/empty segments resolved; always starts with '/'."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    segments: list[str] = []
    for raw in path.split("/"):
        segment = unquote(raw, errors="strict") if "%" in raw else raw
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def _canonical_prefix(prefix: str) -> str:
    return canonical_path(prefix)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    # Sorted longest prefix first so the first hit is the most specific rule.
    routes: tuple[Route, ...]

    @classmethod
    def of(cls, routes: Iterable[Route]) -> RoutePolicy:
        canonical = [Route(_canonical_prefix(r.prefix), r.public, tuple(r.roles)) for r in routes]
        canonical.sort(key=lambda r: len(r.prefix), reverse=True)
        return cls(tuple(canonical))

    def match(self, path: str) -> Route:
        try:
            canonical = canonical_path(path)
        except UnicodeDecodeError:
            # Undecodable escapes get the default (authenticated) rule, never a public one.
            return DEFAULT_ROUTE
        for route in self.routes:
            prefix = route.prefix
            if prefix in ("/", canonical) or canonical.startswith(prefix + "/"):
                return route
        return DEFAULT_ROUTE


def missing_roles(route: Route, roles: Iterable[str]) -> tuple[str, ...]:
    held = set(roles)
    return tuple(role for role in route.roles if role not in held)
