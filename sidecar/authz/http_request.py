"""An HTTP/1.1 request as the parser hands it over → what the core reads (``RequestView``). Pure: no I/O, no state.

Header names arrive as bytes in whatever case the client wrote; the core wants them lower-cased, once, as text.
Header values become text with ``surrogateescape``, so obs-text and other non-UTF-8 bytes (a Cookie header can
carry them) stay byte-exact through to the answer. The request line is latin-1, as RFC 9110 reads it. Which
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

_FORWARD_AUTH = FORWARD_AUTH_PATH.encode()


def _name_table(names: tuple[str, ...]) -> dict[bytes, str]:
    """Header names as Envoy, nginx and Traefik spell them → lower case, so the common ones cost no decode."""
    return {form.encode(): name for name in names for form in (name, name.title(), name.upper())}


_NAMES = _name_table(
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
    trust: ForwardedTrust, method: bytes, target: bytes, raw_headers: list[tuple[bytes, bytes]], peer: str
) -> RequestView:
    """The request the core decides on: the request line, or on ``/forward-auth`` the one the proxy names.
    ``raw_headers``: (name, value) of each header line as parsed, in arrival order, duplicates kept."""
    names = _NAMES
    headers = tuple(
        [
            (names.get(name) or name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape"))
            for name, value in raw_headers
        ]
    )
    return to_request_view(method.decode("latin-1"), target.decode("latin-1"), headers, peer, trust)


def asks_forward_auth(target: bytes, trust: ForwardedTrust) -> bool:
    """The request asks on ``/forward-auth`` about one a proxy names (its allow echoes an untouched Cookie)."""
    # Envoy never asks there: most requests are told apart without decoding their target.
    return target.startswith(_FORWARD_AUTH) and is_forward_auth(target.decode("latin-1"), trust)
