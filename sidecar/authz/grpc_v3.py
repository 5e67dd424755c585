"""Envoy ext_authz v3 over gRPC: CheckRequest → RequestView, Decision → CheckResponse. Translation only: the
parts of an answer (metadata, which denials are encoded once) come from ``sidecar.authz.answers``.

Headers are read from ``header_map`` when Envoy sends it (``encode_raw_headers: true``: every header line
separately, raw bytes) and from the ``headers`` map otherwise (duplicates arrive comma-joined there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from sidecar.authz.answers import AllowMetadata, Denials, deny_metadata, unanswerable
from sidecar.authz.service import AuthzService, Pending
from sidecar.core.decision import COOKIE_HEADER, Allow, Decision, Deny
from sidecar.core.memo import keep
from sidecar.core.request import RequestView

log = logging.getLogger("sidecar.authz")

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
MAX_MEMOIZED_ALLOWS = 4096  # encoded answers of the allows seen last (a few hundred bytes each)
MAX_MEMOIZED_ALLOW_BYTES = 2048

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_OK_STATUS = status_pb2.Status(code=code_pb2.OK)
_DENY_STATUS = {
    401: status_pb2.Status(code=code_pb2.UNAUTHENTICATED),
    403: status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
    503: status_pb2.Status(code=code_pb2.UNAVAILABLE),
}
_OTHER_DENY_STATUS = status_pb2.Status(code=code_pb2.PERMISSION_DENIED)


def _text(raw: bytes) -> str:
    # surrogateescape keeps non-UTF-8 bytes round-trippable (a rewritten Cookie header must stay byte-exact).
    return raw.decode("utf-8", "surrogateescape")


def to_request_view(request: Any) -> RequestView:
    attributes = request.attributes
    http = attributes.request.http
    entries = http.header_map.headers
    if entries:
        # A list built and then frozen, each field read once: protobuf attribute reads are what this costs.
        headers = tuple(
            [(entry.key.lower(), _text(raw) if (raw := entry.raw_value) else entry.value) for entry in entries]
        )
    else:
        headers = tuple((key.lower(), value) for key, value in http.headers.items())
    context = tuple(attributes.context_extensions.items()) if attributes.context_extensions else ()
    source = attributes.source.address.socket_address.address
    return RequestView(http.method, http.scheme, http.host, http.path, headers, source, context)


def _header(key: str, value: str) -> Any:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return base_pb2.HeaderValue(key=key, raw_value=value.encode("utf-8", "surrogateescape"))
    return base_pb2.HeaderValue(key=key, value=value)


def _struct(metadata: dict[str, str] | dict[str, str | int]) -> Any:
    """``dynamic_metadata``: Envoy emits it under ``envoy.filters.http.ext_authz`` for access logs."""
    struct = struct_pb2.Struct()
    struct.update(metadata)
    return struct


# An allow's dynamic_metadata, built once per session: the CheckResponse takes a copy, so the memo stays as made.
_allow_struct = AllowMetadata(_struct).of


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_cookie_pieces(value: str) -> str:
    """The pieces of a Cookie value that are valid UTF-8, in order. Envoy (1.40) ignores ``raw_value`` in an
    OkHttpResponse header, so a rewritten Cookie holding other bytes would reach the upstream empty, losing every
    cookie; RFC 6265 cookie-octets are ASCII anyway, so only the non-conforming pieces are dropped."""
    return "; ".join(piece.strip(" \t") for piece in value.split(";") if _encodable(piece) and piece.strip(" \t"))


def _ok_headers(allow: Allow) -> tuple[list[Any], Any]:
    to_set, to_remove = list(allow.headers_to_set), list(allow.headers_to_remove)
    for i, (name, value) in enumerate(to_set):
        if name == COOKIE_HEADER and not _encodable(value):
            kept = utf8_cookie_pieces(value)
            if kept:
                to_set[i] = (name, kept)
            else:
                del to_set[i]
                to_remove.append(COOKIE_HEADER)
            break
    headers = [base_pb2.HeaderValueOption(header=_header(k, v), append_action=_OVERWRITE) for k, v in to_set]
    return headers, to_remove


def to_check_response(decision: Decision) -> Any:
    if isinstance(decision, Allow):
        headers, to_remove = _ok_headers(decision)
        return external_auth_pb2.CheckResponse(
            status=_OK_STATUS,
            ok_response=external_auth_pb2.OkHttpResponse(headers=headers, headers_to_remove=to_remove),
            dynamic_metadata=_allow_struct(decision),
        )
    return _denied(decision)


def _build_denied(deny: Deny) -> Any:
    return external_auth_pb2.CheckResponse(
        dynamic_metadata=_struct(deny_metadata(deny)),
        status=_DENY_STATUS.get(deny.status, _OTHER_DENY_STATUS),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=deny.status),
            headers=[
                base_pb2.HeaderValueOption(header=_header(k, v), append_action=_OVERWRITE) for k, v in deny.headers
            ],
            body=deny.body.decode("utf-8"),
        ),
    )


# The constant denials' CheckResponse, built once each (the messages; the wire path below keeps their bytes).
_denied = Denials(_build_denied).of


def _encode_allow(allow: Allow) -> bytes:
    encoded: bytes = to_check_response(allow).SerializeToString()
    return encoded


def _encode_denial(deny: Deny) -> bytes:
    encoded: bytes = _denied(deny).SerializeToString()
    return encoded


# The encoded CheckResponse of an allow, kept per Allow (equal decisions encode to equal bytes): a logged-in
# user's repeated request has the same identity headers, cookie rewrite and metadata, so its answer is a lookup,
# not a message built and serialized (about a fifth of a cache hit's CPU in the gRPC mode, issue #14).
_memoized_allows: dict[Allow, bytes] = {}


def _encoded_allow(allow: Allow) -> bytes:
    encoded = _memoized_allows.get(allow)
    if encoded is None:
        encoded = _encode_allow(allow)
        # Bounded in bytes, not only in count: a client on a public route chooses the spoofed header names an
        # allow removes, so one large answer is encoded each time rather than kept (4,096 x 2 KiB at most).
        if len(encoded) <= MAX_MEMOIZED_ALLOW_BYTES:
            keep(_memoized_allows, allow, encoded, MAX_MEMOIZED_ALLOWS)
    return encoded


# The constant denials, encoded once each.
_encoded_denial = Denials(_encode_denial).of


def encoded_response(decision: Decision) -> bytes:
    """``to_check_response(decision)`` serialized, from memory when the same decision was answered before."""
    if isinstance(decision, Allow):
        return _encoded_allow(decision)
    return _encoded_denial(decision)


def _readable(request: Any) -> RequestView | None:
    """The request's view; None (answered 503) for one that cannot be read, never an error Envoy could allow."""
    try:
        return to_request_view(request)
    except Exception:
        log.exception("unreadable CheckRequest; denying with 503")
        return None


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, service: AuthzService) -> None:
        self._service = service

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """The encoded CheckResponse (the method is registered with no response serializer: bytes go out as
        they are)."""
        view = _readable(request)
        if view is None:
            return _encoded_denial(unanswerable())
        return encoded_response(await self._service.check(view))


class ThreadedCheck:
    """Check on a sync ``grpc.server``'s handler thread: what the service can answer from memory is answered in
    the thread (``begin``); a check that needs a store read is finished on ``loop``, where the stores live, and
    the thread waits for it. The wait is bounded: ``finish`` meets the store deadline itself, and a loop that is
    gone (shutting down) leaves the thread a 503 after ``wait_seconds``, never an error Envoy could allow."""

    def __init__(
        self,
        service: AuthzService,
        loop: asyncio.AbstractEventLoop,
        wait_seconds: float,
        released: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """``released``: entered around the wait, so the thread's pool lets another Check run meanwhile."""
        self._service = service
        self._loop = loop
        self._wait_seconds = wait_seconds
        self._released = released

    def __call__(self, request: Any, context: grpc.ServicerContext) -> bytes:
        view = _readable(request)
        if view is None:
            return _encoded_denial(unanswerable())
        step = self._service.begin(view)
        return encoded_response(self._finish(step) if isinstance(step, Pending) else step)

    def _finish(self, pending: Pending) -> Decision:
        finishing = self._service.finish(pending)
        try:
            future = asyncio.run_coroutine_threadsafe(finishing, self._loop)
        except RuntimeError:  # the loop is closed: the process is stopping
            finishing.close()
            return unanswerable()
        try:
            with self._released():
                return future.result(self._wait_seconds)
        except Exception:  # timed out or cancelled: the loop is stopping or stalled
            future.cancel()
            log.warning(
                "a Check waiting on the event loop got no answer in %.1fs; denying with 503", self._wait_seconds
            )
            return unanswerable()


def _register(server: Any, check: Any) -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        check,
        request_deserializer=external_auth_pb2.CheckRequest.FromString,
        response_serializer=None,  # Check answers encoded bytes
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {"Check": handler}),))


def add_to_server(server: grpc.aio.Server, service: AuthzService) -> None:
    """ext_authz on a ``grpc.aio`` server (the model of a port the SessionService shares)."""
    _register(server, AuthorizationServicer(service).Check)


def add_to_threaded_server(
    server: grpc.Server,
    service: AuthzService,
    loop: asyncio.AbstractEventLoop,
    wait_seconds: float,
    released: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
) -> None:
    """ext_authz on a sync ``grpc.server``: cache hits in its handler threads, store reads on ``loop`` (a thread
    waiting for one inside ``released``)."""
    _register(server, ThreadedCheck(service, loop, wait_seconds, released))
