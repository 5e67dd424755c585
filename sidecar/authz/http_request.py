"""An HTTP/1.1 request as the parser hands it over → what the core reads (``RequestView``). Pure: no I/O, no state.

The server hands headers over lower-cased, as text (``httpserver.protocol``; ``HEADER_NAMES`` spares it decoding the
names read here); the request line arrives as bytes and is read as latin-1, as RFC 9110 reads it. Which
request the view is about (the request line, or on ``/forward-auth`` the one the proxy's headers name) and which
client sent it are the trust rules of ``sidecar.authz.forwarded``.
"""

from __future__ import annotations

from sidecar.authz.forwarded import (
    FORWARD_AUTH_PATH,
    FORWARDED_NAMES,
    ForwardedTrust,
    is_forward_auth,
    to_request_view,
)
from sidecar.core.request import RequestView

FORWARD_AUTH_TARGET = FORWARD_AUTH_PATH.encode()
# The method tokens as text, so the common ones cost no decoding (the parser accepts only known tokens).
_METHODS = {
    token.encode(): token
    for token in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "CONNECT")
}


def _name_table(names: tuple[str, ...]) -> dict[bytes, str]:
    """Header names as Envoy, nginx and Traefik spell them → lower case, so the common ones cost no decode."""
    return {form.encode(): name for name in names for form in (name, name.title(), name.upper())}


HEADER_NAMES = _name_table(
    (
        *sorted(FORWARDED_NAMES),
        "host",
        "x-forwarded-for",
        "accept",
        "authorization",
        "content-length",
        "cookie",
        "sec-fetch-mode",
        "user-agent",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-internal",
        "x-real-ip",
        "x-request-id",
    )
)


def request_view(
    trust: ForwardedTrust, method: bytes, target: bytes, headers: list[tuple[str, str]], peer: str
) -> RequestView:
    """The request the core decides on: the request line, or on ``/forward-auth`` the one the proxy names.
    ``headers``: (lower-case name, value) of each header line, in arrival order, duplicates kept."""
    text = _METHODS.get(method)
    if text is None:
        text = method.decode("latin-1")
    return to_request_view(text, target.decode("latin-1"), tuple(headers), peer, trust)


def asks_forward_auth(target: bytes, trust: ForwardedTrust) -> bool:
    """The request asks on ``/forward-auth`` about one a proxy names (its allow echoes an untouched Cookie)."""
    # Envoy never asks there: most requests are told apart without decoding their target.
    return target.startswith(FORWARD_AUTH_TARGET) and is_forward_auth(target.decode("latin-1"), trust)
