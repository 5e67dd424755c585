"""The admin listener (``listen.admin``): ``/healthz`` (the process answers) and ``/readyz`` (the store answers).

A deliberately tiny HTTP/1.1 responder on asyncio streams: one request per connection, bounded request size and
time, GET/HEAD only. Metrics and the JWKS join it in later versions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_SECONDS = 5.0


def _response(status: str, body: bytes, head_only: bool) -> bytes:
    headers = (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        "cache-control: no-store\r\nconnection: close\r\n\r\n"
    ).encode()
    return headers if head_only else headers + body


def answer(request_line: bytes, ready: Callable[[], bool]) -> bytes:
    """The response to one request line (pure: no I/O)."""
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", b"bad request\n", False)
    method, target = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"method not allowed\n", False)
    head = method == "HEAD"
    if target == "/healthz":
        return _response("200 OK", b"ok\n", head)
    if target == "/readyz":
        if ready():
            return _response("200 OK", b"ready\n", head)
        return _response("503 Service Unavailable", b"session store unreachable\n", head)
    return _response("404 Not Found", b"not found\n", head)


class AdminServer:
    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unanswerable = (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError)
        try:
            with contextlib.suppress(*unanswerable):  # a slow, short or oversized request just gets closed
                async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                    head = await reader.readuntil(b"\r\n\r\n")
                if len(head) <= MAX_REQUEST_BYTES:
                    writer.write(answer(head.split(b"\r\n", 1)[0], self._ready))
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
