"""HTTP ext_authz and forward-auth on ``listen.http``: an HTTP/1.1 request → RequestView, Decision → response.

Translation only, like the gRPC adapter: the request is read by ``http_request`` (pure), the answer written by
``http_answers``, and the connection served by ``sidecar.httpserver`` (protocol, listener), which this handler
plugs into (the admin listener is the same server with another handler). It serves:

- **Envoy** ``http_service``: Envoy sends the client's method and path as the request line and the headers its
  ``allowed_headers`` let through. The answer is ``200`` with the identity headers to set (Envoy copies those
  matching ``allowed_upstream_headers`` onto the upstream request, overwriting) and
  ``x-envoy-auth-headers-to-remove`` naming the client-sent headers to drop; a denial is its own status, body and
  headers, which Envoy relays to the client (a 5xx becomes Envoy's ``status_on_error``).
- **nginx** ``auth_request``, ingress-nginx and **Traefik** ``forwardAuth``, pointed at ``/forward-auth``: only on
  that path is the original request read from the headers those proxies set, under the trust rules of
  ``sidecar.authz.forwarded`` (all present must agree; ``forward_auth.proxy`` narrows which are read). Anywhere
  else the request line is the original request, so a client cannot spoof ``X-Forwarded-Uri`` through Envoy to
  borrow a public route's decision. There an allow also carries an unchanged ``cookie`` (see
  ``forward_auth_allow``).

A request whose head exceeds ``MAX_REQUEST_BYTES`` gets ``431``, a malformed one ``400``; both close the
connection; one begun must be complete within ``HEADER_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import functools
import logging

from sidecar.authz.forwarded import DEFAULT_TRUST, ForwardedTrust
from sidecar.authz.http_answers import (
    BAD_REQUEST,
    BODY_TOO_LARGE,
    HEADERS_TO_REMOVE,
    TOO_LARGE,
    UNREADABLE,
    encode,
    forward_auth_allow,
)
from sidecar.authz.http_request import FORWARD_AUTH_TARGET, HEADER_NAMES, asks_forward_auth, request_view
from sidecar.authz.service import AuthzService, Pending
from sidecar.core.decision import Allow, Decision
from sidecar.core.request import RequestView
from sidecar.httpserver.handler import Handler, Limits, Refusals
from sidecar.httpserver.listener import HttpListener

log = logging.getLogger("sidecar.authz")

MAX_REQUEST_BYTES = 64 * 1024  # request line + headers + body of one request
MAX_HEADER_LINES = 1024
HEADER_TIMEOUT_SECONDS = 10.0  # a request begun must be complete within this

REFUSALS = Refusals(
    bad_request=BAD_REQUEST,
    too_large=TOO_LARGE,
    body_too_large=BODY_TOO_LARGE,
    unanswerable=UNREADABLE,
)


def authz_handler(service: AuthzService, forwarded: ForwardedTrust) -> Handler[RequestView, Pending, Decision]:
    """A request is a Check: read by ``http_request``, decided by the service (from memory in ``begin`` when it
    can), answered by ``http_answers``."""

    def encode_answer(request: RequestView, target: bytes, answer: Decision, close: bool, head: bool) -> bytes:
        # The prefix test first: Envoy never asks on /forward-auth, and its allows are most of the traffic.
        if (
            isinstance(answer, Allow)
            and target.startswith(FORWARD_AUTH_TARGET)
            and asks_forward_auth(target, forwarded)
        ):
            answer = forward_auth_allow(answer, request)
        return encode(answer, close=close, head_only=head)

    return Handler(
        read=functools.partial(request_view, forwarded),
        begin=service.begin,
        finish=service.finish,
        encode=encode_answer,
        waits=Pending,
        refusals=REFUSALS,
        header_names=HEADER_NAMES,
    )


class HttpAuthzServer(HttpListener[RequestView, Pending, Decision]):
    """The ``listen.http`` listener."""

    def __init__(
        self,
        service: AuthzService,
        *,
        forwarded: ForwardedTrust = DEFAULT_TRUST,
        idle_timeout: float = 60.0,
        max_connections: int = 1000,
    ) -> None:
        limits = Limits(
            max_request_bytes=MAX_REQUEST_BYTES,
            max_header_lines=MAX_HEADER_LINES,
            request_timeout=HEADER_TIMEOUT_SECONDS,
            idle_timeout=idle_timeout,  # listen.idle_timeout
            max_connections=max_connections,  # listen.max_connections
        )
        super().__init__(authz_handler(service, forwarded), limits, name="listen.http", log=log)
        # forward_auth.*: which headers name the original request, which X-Forwarded-For hops count
        self.forwarded = forwarded


__all__ = ["HEADERS_TO_REMOVE", "HttpAuthzServer", "authz_handler", "encode", "forward_auth_allow"]
