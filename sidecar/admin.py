"""The admin listener (``listen.admin``): ``/healthz`` (the process answers), ``/readyz`` (the store answers),
``/metrics`` (Prometheus text format) and, when identity assertions are on, ``/.well-known/jwks.json``.

A deliberately tiny HTTP/1.1 responder on asyncio streams: one request per connection, bounded request size and
time, GET/HEAD only. Rendering the metrics reads every worker's files in multiprocess mode, so it runs in a
thread, off the event loop that answers Checks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

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


def request_target(request_line: bytes) -> tuple[str, str] | None:
    """(method, path without query) of a request line, or None when it is not HTTP/1.x."""
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    return parts[0], parts[1].split("?", 1)[0]


def answer(
    request_line: bytes,
    ready: Callable[[], bool],
    metrics: Callable[[], bytes] | None = None,
    jwks: Callable[[], bytes] | None = None,
) -> bytes:
    """The response to one request line (pure given its callables: ``metrics`` renders the exposition, ``jwks`` the
    key set; None where the listener does not serve them)."""
    target = request_target(request_line)
    if target is None:
        return _response("400 Bad Request", b"bad request\n", False)
    method, path = target
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"method not allowed\n", False)
    head = method == "HEAD"
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


class AdminServer:
    def __init__(
        self,
        ready: Callable[[], bool],
        *,
        metrics: Callable[[], bytes] | None = None,
        jwks: Callable[[], bytes] | None = None,
    ) -> None:
        self._ready = ready
        self._metrics = metrics
        self._jwks = jwks
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unanswerable = (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError)
        try:
            with contextlib.suppress(*unanswerable):  # a slow, short or oversized request just gets closed
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
                if len(head) <= MAX_REQUEST_BYTES:
                    line = head.split(b"\r\n", 1)[0]
                    target = request_target(line)
                    if target is not None and target[1] == METRICS_PATH and self._metrics is not None:
                        rendered = await asyncio.to_thread(self._metrics)
                        response = answer(line, self._ready, lambda: rendered, self._jwks)
                    else:
                        response = answer(line, self._ready, self._metrics, self._jwks)
                    writer.write(response)
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the admin server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
