"""The HTTP ceiling of ``bench/throughput.py`` (issue #14): an ext_authz ``http_service`` that only reads the cookie.

asyncio on uvloop with the httptools parser, as the sidecar's ``listen.http``: per request it parses the head,
keeps the ``Cookie`` header and answers a constant ``200`` with ``x-user-id`` when a ``SESSION`` cookie is there,
a constant ``401`` when not. Nothing else: no session, no cache, no metrics. HTTP/1.1 keep-alive, as Envoy's
ext_authz cluster uses it.

    python bench/constant_http.py --port 9302
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import cast

import httptools

COOKIE = b"SESSION="
ALLOW = b"HTTP/1.1 200 OK\r\nx-user-id: bench\r\ncontent-length: 0\r\n\r\n"
DENY = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n"
BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class ConstantProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._cookie = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, without the subclass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(BAD)
                self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._cookie = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"cookie":
            self._cookie = value

    def on_message_complete(self) -> None:
        if self._transport is None:
            return
        found = any(part.strip().startswith(COOKIE) for part in self._cookie.split(b";"))
        self._transport.write(ALLOW if found else DENY)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ConstantProtocol, "127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()  # open keep-alive connections end with the process


def main() -> None:
    parser = argparse.ArgumentParser(description="constant-answer ext_authz HTTP server (the HTTP ceiling)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 - the event loop of `sidecar serve`

        uvloop.install()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
