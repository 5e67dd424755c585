"""The admin listener (``listen.admin``): ``/healthz`` (the process answers), ``/readyz`` (the store answers),
``/metrics`` (Prometheus text format) and, when identity assertions are on, ``/.well-known/jwks.json``.

The same HTTP/1.1 server as ``listen.http`` (``sidecar.httpserver.listener``: one parser, the same bounds,
idle timeout and connection limit) with its own handler and tighter limits: one request per connection, its head
at most ``MAX_REQUEST_BYTES`` and complete within ``READ_TIMEOUT_SECONDS`` of connecting (or ``idle_timeout`` when
shorter), GET and HEAD only (a method the parser does not know is a malformed request: 400). An oversized request
is closed without an answer. Rendering the metrics reads every
worker's files in multiprocess mode, so it runs in a thread, off the event loop that answers Checks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.httpserver.handler import Handler, Limits, Refusals
from sidecar.httpserver.listener import HttpListener

log = logging.getLogger("sidecar.admin")

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_SECONDS = 5.0

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text exposition 0.0.4
METRICS_PATH = "/metrics"
JWKS_PATH = "/.well-known/jwks.json"
# Verifiers cache the key set: a key listed second (rotation step 1) must be published this long before it signs.
JWKS_MAX_AGE_SECONDS = 300


def _response(
    status: str, body: bytes, head_only: bool, content_type: str = TEXT, cache_control: str = "no-store"
) -> bytes:
    headers = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        f"cache-control: {cache_control}\r\nconnection: close\r\n\r\n"
    ).encode()
    return headers if head_only else headers + body


def answer(
    method: str,
    target: str,
    ready: Callable[[], bool],
    metrics: Callable[[], bytes] | None = None,
    jwks: Callable[[], bytes] | None = None,
) -> bytes:
    """The response to one request (pure given its callables: ``metrics`` renders the exposition, ``jwks`` the
    key set; None where the listener does not serve them). The query is ignored."""
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"method not allowed\n", False)
    head = method == "HEAD"
    path = target.split("?", 1)[0]
    if path == METRICS_PATH and metrics is not None:
        return _response("200 OK", metrics(), head, METRICS_CONTENT_TYPE)
    if path == JWKS_PATH and jwks is not None:
        return _response("200 OK", jwks(), head, JSON, f"public, max-age={JWKS_MAX_AGE_SECONDS}")
    if path == "/healthz":
        return _response("200 OK", b"ok\n", head)
    if path == "/readyz":
        if ready():
            return _response("200 OK", b"ready\n", head)
        return _response("503 Service Unavailable", b"session store unreachable\n", head)
    return _response("404 Not Found", b"not found\n", head)


REFUSALS = Refusals(
    bad_request=_response("400 Bad Request", b"bad request\n", False),
    too_large=b"",  # closed without an answer, as a slow request is
    body_too_large=_response("413 Content Too Large", b"content too large\n", False),
    unanswerable=_response("500 Internal Server Error", b"internal error\n", False),
)


@dataclass(frozen=True, slots=True)
class AdminRequest:
    method: str
    target: str


@dataclass(frozen=True, slots=True)
class _RenderMetrics:
    """A ``/metrics`` request: rendered in a thread (``finish``)."""

    request: AdminRequest


def admin_handler(
    ready: Callable[[], bool], metrics: Callable[[], bytes] | None, jwks: Callable[[], bytes] | None
) -> Handler[AdminRequest, _RenderMetrics, bytes]:
    """Each request answered by ``answer``; ``/metrics`` rendered in a thread first."""

    def read(method: bytes, target: bytes, headers: list[tuple[str, str]], peer: str) -> AdminRequest:
        return AdminRequest(method.decode("latin-1"), target.decode("latin-1"))

    def begin(request: AdminRequest) -> bytes | _RenderMetrics:
        asks_metrics = metrics is not None and request.target.split("?", 1)[0] == METRICS_PATH
        if asks_metrics and request.method in ("GET", "HEAD"):
            return _RenderMetrics(request)
        return answer(request.method, request.target, ready, metrics, jwks)

    async def finish(work: _RenderMetrics) -> bytes:
        assert metrics is not None  # begin asks for rendering only when there are metrics
        rendered = await asyncio.to_thread(metrics)
        request = work.request
        return answer(request.method, request.target, ready, lambda: rendered, jwks)

    def encode(request: AdminRequest, target: bytes, response: bytes, close: bool, head: bool) -> bytes:
        return response  # always closing, with or without a body as the method asked

    return Handler(read=read, begin=begin, finish=finish, encode=encode, waits=_RenderMetrics, refusals=REFUSALS)


class AdminServer(HttpListener[AdminRequest, _RenderMetrics, bytes]):
    def __init__(
        self,
        ready: Callable[[], bool],
        *,
        metrics: Callable[[], bytes] | None = None,
        jwks: Callable[[], bytes] | None = None,
        idle_timeout: float = 60.0,
        max_connections: int = 1000,
    ) -> None:
        limits = Limits(
            max_request_bytes=MAX_REQUEST_BYTES,
            max_header_lines=MAX_REQUEST_BYTES,  # their bytes bound them
            request_timeout=min(READ_TIMEOUT_SECONDS, idle_timeout),
            idle_timeout=idle_timeout,  # listen.idle_timeout: also bounds how long an answer may sit unread
            max_connections=max_connections,  # listen.max_connections
            keep_alive=False,
        )
        super().__init__(admin_handler(ready, metrics, jwks), limits, name="listen.admin", log=log)

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return self.address[1]
