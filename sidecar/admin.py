"""The admin listener (``listen.admin``): ``/healthz`` (the process answers), ``/readyz`` (the store answers),
``/metrics`` (Prometheus text format) and, when identity assertions are on, ``/.well-known/jwks.json``.

A deliberately tiny HTTP/1.1 responder on asyncio streams: one request per connection, bounded request size and
time, GET/HEAD only, at most ``max_connections`` at once. Rendering the metrics reads every worker's files in
multiprocess mode, so it runs in a thread, off the event loop that answers Checks.

Also here: the process's descriptor budget shared by the listeners (``connection_limit``,
``raise_open_files_limit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Callable

log = logging.getLogger("sidecar.admin")

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_SECONDS = 5.0
# listen.http and listen.admin each hold at most this fraction of the open-files limit, so a flood of one leaves
# the other, the gRPC listener and the store's connections descriptors to accept and connect with.
DESCRIPTOR_SHARE = 4
REFUSAL_WARNING_INTERVAL = 60.0  # a flood over max_connections is logged once a minute, with a count


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


def open_files_limit() -> int | None:
    """The soft RLIMIT_NOFILE, None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_limit(max_connections: int) -> int:
    """``max_connections`` lowered to the listener's share of the open-files limit (at least 1)."""
    limit = open_files_limit()
    if limit is None:
        return max_connections
    return max(1, min(max_connections, limit // DESCRIPTOR_SHARE))


def raise_open_files_limit() -> tuple[int | None, int | None]:
    """Raise the soft open-files limit to the hard one (1,024 by default is a few hundred connections per
    listener); returns (before, after). A limit that cannot be raised stays as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = open_files_limit()
    if hard != soft:
        with contextlib.suppress(ValueError, OSError):  # an unlimited hard limit can exceed the kernel's nr_open
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return before, open_files_limit()


class AdminServer:
    def __init__(
        self,
        ready: Callable[[], bool],
        *,
        metrics: Callable[[], bytes] | None = None,
        jwks: Callable[[], bytes] | None = None,
        idle_timeout: float = 60.0,
        max_connections: int = 1000,
    ) -> None:
        self._ready = ready
        self._metrics = metrics
        self._jwks = jwks
        self.idle_timeout = idle_timeout  # listen.idle_timeout: also bounds how long an answer may sit unread
        self.max_connections = max_connections  # listen.max_connections (start() lowers it to the descriptor share)
        self._open = 0
        self._refused = 0  # connections refused since the last warning
        self._warned_at: float | None = None
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.max_connections:
            self._refusing()
            writer.transport.abort()  # refused at once, so a flood holds no more descriptors than the bound
            return
        self._open += 1
        unanswerable = (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError)
        try:
            with contextlib.suppress(*unanswerable):  # a slow, short or oversized request just gets closed
                async with asyncio.timeout(min(READ_TIMEOUT_SECONDS, self.idle_timeout)):
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
                    async with asyncio.timeout(self.idle_timeout):
                        await writer.drain()
        finally:
            try:
                if writer.transport.get_write_buffer_size():
                    writer.transport.abort()  # the client does not read: close() would wait for it forever
                else:
                    writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            finally:
                self._open -= 1

    def _refusing(self) -> None:
        self._refused += 1
        now = asyncio.get_running_loop().time()
        if self._warned_at is None or now - self._warned_at >= REFUSAL_WARNING_INTERVAL:
            log.warning(
                "listen.admin: %d connections open, the most allowed (listen.max_connections, at most a share of "
                "the open-files limit); refused %d new ones",
                self._open,
                self._refused,
            )
            self._warned_at, self._refused = now, 0

    async def start(self, host: str, port: int) -> None:
        self.max_connections = connection_limit(self.max_connections)
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self._open

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
