"""Talking to an HTTP listener in tests: raw request bytes, answers read off a socket, and an ext_authz server on
a loopback port over the in-memory store (``serving``), with ERROR logs and event-loop exceptions as problems."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sidecar.authz import http
from sidecar.authz.service import AuthzService
from sidecar.core.decision import EdgeSettings
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.store.memory import MemoryStore
from tests.support.edge import RING, SETTINGS


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


@dataclass
class Served:
    port: int
    manager: SessionManager
    store: MemoryStore
    server: http.HttpAuthzServer

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def ask(self, target: str, *headers: tuple[str, str], method: str = "GET") -> Response:
        reader, writer = await self.connect()
        try:
            writer.write(request(target, *headers, method=method))
            return await read_response(reader)
        finally:
            writer.close()


def request(target: str, *headers: tuple[str, str], method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "host: app.example.com", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("utf-8", "surrogateescape").rstrip("\r\n").split("\r\n")
    headers = [(n.lower(), v) for n, _, v in (line.partition(": ") for line in lines)]
    length = int(next((v for n, v in headers if n == "content-length"), "0"))
    body = b"" if head_only else await asyncio.wait_for(reader.readexactly(length), 5)
    return Response(int(status_line.split(" ")[1]), headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


class Problems(logging.Handler):
    """Collects ERROR records and event-loop exceptions: the server must produce neither."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


@contextlib.asynccontextmanager
async def serving(
    problems: Problems, settings: EdgeSettings = SETTINGS, *, idle_timeout: float = 60.0, max_connections: int = 1000
) -> AsyncIterator[Served]:
    """An HttpAuthzServer on a free loopback port over a fresh in-memory store; loop exceptions are problems."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: problems.seen.append(str(context.get("message"))))
    store = MemoryStore()
    keys = KeyRingSource(store, RING)
    service = AuthzService(settings, store, keys, deadline=0.15)
    server = http.HttpAuthzServer(service, idle_timeout=idle_timeout, max_connections=max_connections)
    await server.start("127.0.0.1", 0)
    manager = SessionManager(store, keys, cookie_name="SESSION", idle_timeout=60, absolute_timeout=3600)
    try:
        yield Served(server.address[1], manager, store, server)
    finally:
        await server.stop(1.0)
