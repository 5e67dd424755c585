"""An HTTP/1.1 listener: accepts connections up to ``max_connections``, serves each with ``HttpProtocol`` and its
handler, and stops with a grace period. ``listen.http`` (ext_authz, forward-auth) and ``listen.admin`` (health,
metrics, JWKS) are two of these with different handlers and limits.

Also here: the process's descriptor budget the listeners share (``connection_limit``, ``raise_open_files_limit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
from typing import Generic

from sidecar.httpserver.handler import A, Connection, Handler, Limits, Q, W
from sidecar.httpserver.protocol import HttpProtocol

# listen.http and listen.admin each hold at most this fraction of the open-files limit, so a flood of one leaves
# the other, the gRPC listener and the store's connections descriptors to accept and connect with.
DESCRIPTOR_SHARE = 4
REFUSAL_WARNING_INTERVAL = 60.0  # a flood over max_connections is logged once a minute, with a count
BACKLOG = 1024


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


class HttpListener(Generic[Q, W, A]):
    """One listening socket; ``name`` is its config key (``listen.http``), in the log lines about it."""

    def __init__(self, handler: Handler[Q, W, A], limits: Limits, *, name: str, log: logging.Logger) -> None:
        self.handler = handler  # read by each connection as it opens
        self.limits = limits  # read by each connection as it opens
        self.name = name
        self.log = log
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._refused = 0  # connections refused since the last warning
        self._warned_at: float | None = None
        self._drained: asyncio.Event | None = None  # set when the last connection closes during stop()

    @property
    def idle_timeout(self) -> float:
        return self.limits.idle_timeout

    @property
    def max_connections(self) -> int:
        return self.limits.max_connections

    async def start(self, host: str, port: int) -> None:
        self.limits = dataclasses.replace(self.limits, max_connections=connection_limit(self.limits.max_connections))
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpProtocol(self.handler, self), host, port, backlog=BACKLOG)

    async def start_unix(self, path: str) -> None:
        """Listen on the unix socket ``path`` (a stale socket file there is replaced)."""
        self.limits = dataclasses.replace(self.limits, max_connections=connection_limit(self.limits.max_connections))
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: HttpProtocol(self.handler, self), path, backlog=BACKLOG)

    def opened(self, connection: Connection) -> bool:
        """Count a new connection in; False when the listener is full and it must be closed at once."""
        if len(self._connections) >= self.limits.max_connections:
            self._refused += 1
            now = asyncio.get_running_loop().time()
            if self._warned_at is None or now - self._warned_at >= REFUSAL_WARNING_INTERVAL:
                self.log.warning(
                    "%s: %d connections open, the most allowed (listen.max_connections, at most a share of "
                    "the open-files limit); refused %d new ones",
                    self.name,
                    len(self._connections),
                    self._refused,
                )
                self._warned_at, self._refused = now, 0
            return False
        self._connections.add(connection)
        return True

    def closed(self, connection: Connection) -> None:
        self._connections.discard(connection)
        if not self._connections and self._drained is not None:
            self._drained.set()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) of the first socket (the port picked for port 0); (path, 0) on a unix socket."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError(f"{self.name} is not listening")
        name = self._server.sockets[0].getsockname()
        if isinstance(name, str):
            return name, 0
        return str(name[0]), int(name[1])

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let answers in flight finish for up to ``grace`` seconds, then drop the rest."""
        if self._server is None:
            return
        self._server.close()
        self._drained = asyncio.Event()
        for connection in list(self._connections):
            connection.shutdown()
        if self._connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        for connection in list(self._connections):
            connection.abort()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None
