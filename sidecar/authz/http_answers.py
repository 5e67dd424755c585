"""The bytes of an HTTP ext_authz / forward-auth answer: a Decision → an HTTP/1.1 response (``sidecar.authz.http``
parses requests and writes these). An allow is ``200`` with the headers to set, ``x-envoy-auth-headers-to-remove``
and the ``x-authz-*`` metadata; a denial is its own status, headers and body; the constant ones are encoded once.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from sidecar.core.decision import Allow, Decision, Deny, unavailable

log = logging.getLogger("sidecar.authz")

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"
_MAX_CACHED_DENIALS = 256

# --------------------------------------------------------------------------------------------------- response

_CRLF = "\r\n"
_CONNECTION_CLOSE = b"connection: close\r\n"
_CONNECTION_CLOSE_TEXT = "connection: close\r\n"
_ALLOW_HEAD = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
METADATA_PREFIX = "x-authz-"  # answer headers that carry the decision's metadata (see allow_metadata)


def _bare_allow(reason: str) -> tuple[bytes, bytes]:
    head = _ALLOW_HEAD + f"{METADATA_PREFIX}reason: {reason}\r\n"
    return (head + _CRLF).encode(), (head + _CONNECTION_CLOSE_TEXT + _CRLF).encode()


# An anonymous allow with nothing to set or remove (a public route), keep-alive and closing.
_ALLOW_PUBLIC = _bare_allow("public")


class UnsafeHeader(ValueError):
    """A header value the decision carries holds CR, LF or NUL: sending it would split the response."""


def _checked(value: str) -> str:
    if "\r" in value or "\n" in value or "\0" in value:
        raise UnsafeHeader("header value with CR, LF or NUL")
    return value


def _status_line(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n"


def allow_metadata(allow: Allow) -> str:
    """The ``x-authz-*`` lines of an allow: Envoy's ``dynamic_metadata_from_headers`` turns them into the dynamic
    metadata a gRPC answer carries (for access logs); Envoy does not pass them upstream (they are not in
    ``allowed_upstream_headers``), and forward-auth proxies copy only the headers they are told to."""
    text = f"{METADATA_PREFIX}reason: {allow.reason}\r\n"
    if allow.user_id is not None:
        text += f"{METADATA_PREFIX}user-id: {_checked(allow.user_id)}\r\n"
    if allow.session_id is not None:
        text += f"{METADATA_PREFIX}session-id: {_checked(allow.session_id)}\r\n"
    return text


def allow_response(allow: Allow, *, close: bool = False) -> bytes:
    """``200``: the headers to set, the client-sent ones to remove (never a name in both), and the metadata."""
    if not allow.headers_to_set and not allow.headers_to_remove and allow.user_id is None and allow.reason == "public":
        return _ALLOW_PUBLIC[close]
    text = _ALLOW_HEAD + allow_metadata(allow)
    for name, value in allow.headers_to_set:
        text += f"{name}: {_checked(value)}\r\n"
    if allow.headers_to_remove:
        text += f"{HEADERS_TO_REMOVE}: {','.join(allow.headers_to_remove)}\r\n"
    head = text.encode("utf-8", "surrogateescape")  # a rewritten Cookie header stays byte-exact
    return head + (_CONNECTION_CLOSE + b"\r\n" if close else b"\r\n")


def deny_response(deny: Deny, *, close: bool = False, head_only: bool = False) -> bytes:
    """The denial's status, headers and body (``head_only``: the answer to HEAD, without a body)."""
    body = b"" if head_only else deny.body
    text = _status_line(deny.status) + f"content-length: {len(body)}\r\n{METADATA_PREFIX}reason: {deny.reason}\r\n"
    for name, value in deny.headers:
        text += f"{name}: {_checked(value)}\r\n"
    if close:
        text += "connection: close\r\n"
    return (text + _CRLF).encode("utf-8", "surrogateescape") + body


# Encoded answers of the memoized (constant) denials, keep-alive and closing: a 401/403/503 costs a lookup.
_DENIED: dict[Deny, tuple[bytes, bytes]] = {}


def _denied(deny: Deny, close: bool) -> bytes:
    cached = _DENIED.get(deny)
    if cached is None:
        cached = deny_response(deny), deny_response(deny, close=True)
        if deny.status != 302 and len(_DENIED) < _MAX_CACHED_DENIALS:  # redirects carry the request's URL
            _DENIED[deny] = cached
    return cached[close]


def encode(decision: Decision, *, close: bool = False, head_only: bool = False) -> bytes:
    """The response bytes of a decision; one that cannot be sent safely becomes the 503 denial."""
    try:
        if isinstance(decision, Allow):
            return allow_response(decision, close=close)
        if head_only:
            return deny_response(decision, close=close, head_only=True)
        return _denied(decision, close)
    except UnsafeHeader:
        log.error("a decision carried a header value with CR, LF or NUL; denying with 503")
        return deny_response(unavailable(), close=close, head_only=head_only)


def _error(status: int, message: str) -> bytes:
    body = f'{{"error":"{message}"}}'.encode()
    return (
        _status_line(status) + "content-type: application/json\r\ncache-control: no-store\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


BAD_REQUEST = _error(400, "bad_request")
TOO_LARGE = _error(431, "request_header_fields_too_large")
BODY_TOO_LARGE = _error(413, "content_too_large")
UNREADABLE = deny_response(unavailable(), close=True)
