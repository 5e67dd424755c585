"""The request as the core sees it: protocol-neutral, lower-cased header names, every header line kept."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RequestView:
    method: str
    scheme: str
    host: str
    path: str  # the request target: path and query, as Envoy's :path
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), in arrival order, duplicates kept
    source: str = ""  # the client's address as the proxy saw it (for counting abuse, never for decisions)
    context: tuple[tuple[str, str], ...] = ()  # Envoy's per-route context_extensions, when it sends them
    # Forward-auth only: the other original URIs the forwarded headers name (the strictest route rule applies)
    alternates: tuple[str, ...] = ()
    # Forward-auth only: the kinds of original-request headers that disagree (e.g. "method,host"); always denied
    conflict: str = ""

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def first(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


def _quality(params: list[str]) -> float:
    for param in params:
        key, _, value = param.strip(" \t").partition("=")
        if key.strip(" \t").lower() == "q":
            try:
                q = float(value.strip(" \t"))
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
        # parameters other than q are part of the media range and do not change preference
    return 1.0


def prefers_html(accept: str) -> bool:
    """True when the most preferred media range of an Accept header is HTML (ties go to the earlier one)."""
    best_type = ""
    best_q = 0.0
    for item in accept.split(",")[:64]:
        media, *params = item.split(";")
        media = media.strip(" \t").lower()
        if not media:
            continue
        q = _quality(params)
        if q > best_q:
            best_type, best_q = media, q
    return best_q > 0 and best_type in _HTML_TYPES


def is_browser_navigation(request: RequestView) -> bool:
    mode = request.first("sec-fetch-mode")
    if mode is not None and mode.strip(" \t").lower() == "navigate":
        return True
    accept = ",".join(request.values("accept"))
    return bool(accept) and prefers_html(accept)
