"""The bytes of an HTTP ext_authz / forward-auth answer: a Decision → an HTTP/1.1 response. Translation only: the
parts of an answer come from ``sidecar.authz.answers``. An allow is ``200`` with the headers to set,
``x-envoy-auth-headers-to-remove`` and the metadata as ``x-authz-*`` headers; a denial is its own status, headers
and body; the constant ones are encoded once.
"""

from __future__ import annotations

import dataclasses
import logging
from http import HTTPStatus

from sidecar.authz.answers import IN_STATUS_LINE, AllowMetadata, Denials, allow_metadata, deny_metadata, unanswerable
from sidecar.core.decision import COOKIE_HEADER, Allow, Decision, Deny
from sidecar.core.request import RequestView

log = logging.getLogger("sidecar.authz")

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"

# --------------------------------------------------------------------------------------------------- response

_CRLF = "\r\n"
_CONNECTION_CLOSE = b"connection: close\r\n"
_CONNECTION_CLOSE_TEXT = "connection: close\r\n"
_ALLOW_HEAD = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"
METADATA_PREFIX = "x-authz-"  # answer headers that carry the decision's metadata (see metadata_lines)
# The start of each metadata key's line (user_id → "x-authz-user-id: "), made once per key.
_METADATA_LINE: dict[str, str] = {}


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


def metadata_lines(metadata: dict[str, str] | dict[str, str | int]) -> str:
    """The ``x-authz-*`` lines of an answer's metadata, but for what the status line says: Envoy's
    ``dynamic_metadata_from_headers`` turns them into the dynamic metadata a gRPC answer carries (for access logs);
    Envoy does not pass them upstream (they are not in ``allowed_upstream_headers``), and forward-auth proxies copy
    only the headers they are told to."""
    text = ""
    for key, value in metadata.items():
        if key in IN_STATUS_LINE:
            continue
        line = _METADATA_LINE.get(key)
        if line is None:
            line = _METADATA_LINE[key] = f"{METADATA_PREFIX}{key.replace('_', '-')}: "
        text += f"{line}{_checked(str(value))}\r\n"
    return text


# An allow's x-authz-* lines, made once per session; one carrying CR, LF or NUL raises every time (nothing stored).
_allow_lines = AllowMetadata(metadata_lines).of


def _bare_allow(allow: Allow) -> tuple[bytes, bytes]:
    head = _ALLOW_HEAD + metadata_lines(allow_metadata(allow))
    return (head + _CRLF).encode(), (head + _CONNECTION_CLOSE_TEXT + _CRLF).encode()


# An anonymous allow with nothing to set or remove (a public route), keep-alive and closing.
_PUBLIC = Allow(headers_to_set=(), headers_to_remove=(), reason="public")
_ALLOW_PUBLIC = _bare_allow(_PUBLIC)


def _allow_head(allow: Allow) -> bytes:
    """An allow's answer up to its last header line (keep-alive: CRLF follows; closing: the Connection line)."""
    text = _ALLOW_HEAD + _allow_lines(allow)
    for name, value in allow.headers_to_set:
        text += f"{name}: {_checked(value)}\r\n"
    if allow.headers_to_remove:
        text += f"{HEADERS_TO_REMOVE}: {','.join(allow.headers_to_remove)}\r\n"
    return text.encode("utf-8", "surrogateescape")  # a rewritten Cookie header stays byte-exact


# The keep-alive answer of each allow seen last: a session's repeated request gets an equal Allow (the same
# identity headers, cookie rewrite, removals and metadata), so its answer is a lookup, not a string built and
# encoded. Bounded: at most MAX_MEMOIZED_ALLOWS entries, each an answer of at most MAX_MEMOIZED_ALLOW_BYTES naming
# at most MAX_MEMOIZED_ALLOW_HEADERS headers (an Allow holds nothing its answer does not name), so requests crafted
# to make many large distinct allows (a public route with many spoofed x-user-* names) hold ~8 MB at most.
MAX_MEMOIZED_ALLOWS = 2048
MAX_MEMOIZED_ALLOW_BYTES = 1024
MAX_MEMOIZED_ALLOW_HEADERS = 16
_allow_answers: dict[Allow, bytes] = {}


def allow_response(allow: Allow, *, close: bool = False) -> bytes:
    """``200``: the headers to set, the client-sent ones to remove (never a name in both), and the metadata."""
    answer = _allow_answers.get(allow)
    if answer is None:
        if (
            not allow.headers_to_set
            and not allow.headers_to_remove
            and allow.user_id is None
            and allow.reason == "public"
        ):
            return _ALLOW_PUBLIC[close]
        answer = _allow_head(allow) + b"\r\n"  # raises UnsafeHeader before anything is kept
        if (
            len(answer) <= MAX_MEMOIZED_ALLOW_BYTES
            and len(allow.headers_to_set) + len(allow.headers_to_remove) <= MAX_MEMOIZED_ALLOW_HEADERS
        ):
            if len(_allow_answers) >= MAX_MEMOIZED_ALLOWS:
                del _allow_answers[next(iter(_allow_answers))]  # the oldest: a session still active comes back
            _allow_answers[allow] = answer
    if close:
        return answer[:-2] + _CONNECTION_CLOSE + b"\r\n"
    return answer


def deny_response(deny: Deny, *, close: bool = False, head_only: bool = False) -> bytes:
    """The denial's status, headers and body (``head_only``: the answer to HEAD, without a body)."""
    body = b"" if head_only else deny.body
    text = _status_line(deny.status) + f"content-length: {len(body)}\r\n" + metadata_lines(deny_metadata(deny))
    for name, value in deny.headers:
        text += f"{name}: {_checked(value)}\r\n"
    if close:
        text += _CONNECTION_CLOSE_TEXT
    return (text + _CRLF).encode("utf-8", "surrogateescape") + body


# The constant denials' answers, keep-alive and closing, encoded once each: a 401/403/503 costs a lookup.
_DENIED = Denials(lambda deny: (deny_response(deny), deny_response(deny, close=True)))
_denied = _DENIED.of


def encode(decision: Decision, *, close: bool = False, head_only: bool = False) -> bytes:
    """The response bytes of a decision; one that cannot be sent safely becomes the 503 denial."""
    try:
        if isinstance(decision, Allow):
            return allow_response(decision, close=close)
        if head_only:
            return deny_response(decision, close=close, head_only=True)
        return _denied(decision)[close]
    except UnsafeHeader:
        log.error("a decision carried a header value with CR, LF or NUL; denying with 503")
        return deny_response(unanswerable(), close=close, head_only=head_only)


def forward_auth_allow(allow: Allow, request: RequestView) -> Allow:
    """An allow as nginx and Traefik need it: with the Cookie header the upstream should get, even when unchanged.

    Envoy keeps a Cookie header the answer does not mention. The forward-auth proxies, told to take Cookie from
    the answer (Traefik ``authResponseHeaders: [Cookie]``, nginx ``auth_request_set … $upstream_http_cookie``),
    would drop it instead, so an untouched Cookie is echoed; a rewritten or removed one is already in the answer.
    """
    if COOKIE_HEADER in allow.headers_to_remove or any(name == COOKIE_HEADER for name, _ in allow.headers_to_set):
        return allow
    lines = request.values(COOKIE_HEADER)
    if not lines:
        return allow
    return dataclasses.replace(allow, headers_to_set=(*allow.headers_to_set, (COOKIE_HEADER, "; ".join(lines))))


def _error(status: int, message: str) -> bytes:
    body = f'{{"error":"{message}"}}'.encode()
    return (
        _status_line(status) + "content-type: application/json\r\ncache-control: no-store\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


BAD_REQUEST = _error(400, "bad_request")
TOO_LARGE = _error(431, "request_header_fields_too_large")
BODY_TOO_LARGE = _error(413, "content_too_large")
UNREADABLE = deny_response(unanswerable(), close=True)
