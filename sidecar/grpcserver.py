"""The gRPC server of ``listen.grpc``: ext_authz, grpc.health.v1 and, when it shares the port, the SessionService.

Two server models behind one small interface (``GrpcListener``), chosen by what the port serves:

- ``ThreadedListener`` (ext_authz and health only, the default): a sync ``grpc.server`` with a small pool of
  handler threads. A Check the process can answer from memory (a cached session, no cookie, a memoized refusal)
  is decided in the handler thread and never touches the event loop; one that needs a store read is handed to
  the event loop (where the store, the key ring refresh and the invalidation listener live) and its thread waits
  for the answer. Measured on 2 cores (issue #14): the sync server costs about 60 % of grpc.aio's CPU per call,
  and a cache hit skips every cross-thread hand-off.
- ``AsyncListener`` (``api.enabled`` with ``listen.api`` ""): a ``grpc.aio`` server, because the SessionService
  and its bearer-token interceptor are asyncio code. Giving the API its own ``listen.api`` keeps Check on the
  threaded model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health as health_sync
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from sidecar.errors import RuntimeFailure
from sidecar.slotpool import SlotPool

# Handler threads running at once: few enough that the GIL is not handed around more than it must be (4 measured
# fastest on 2 cores, issue #14). A Check waiting on a store read gives its slot up, and threads are added for the
# work that arrives meanwhile, up to CHECK_MAX_THREADS (so that many store reads may be in flight before Checks
# queue: at redis.timeout each, a stalled store is still answered with explicit 503s, hundreds a second).
CHECK_THREADS = 4
CHECK_MAX_THREADS = 64
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]


class GrpcListener(Protocol):
    """What ``sidecar.app`` does with the server of listen.grpc (or listen.api), whatever its model."""

    @property
    def server(self) -> Any: ...

    async def set_health(self, service: str, serving: bool) -> None: ...

    async def start(self, key: str, address: str) -> int: ...

    async def stop(self, grace: float) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


def _status(serving: bool) -> Any:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


def _bind(server: Any, key: str, address: str) -> int:
    """The port bound (the one chosen when ``address`` asks for port 0)."""
    try:
        port: int = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeFailure(f"listen.{key}: cannot listen on {address} ({exc})") from None
    return port


class ThreadedListener:
    """A sync ``grpc.server`` whose handler threads run ``threads`` at a time (``SlotPool``), with the sync health
    servicer (its Watch streams are non-blocking: a watcher holds no handler thread)."""

    def __init__(self, threads: int = CHECK_THREADS, max_threads: int = CHECK_MAX_THREADS) -> None:
        self.pool = SlotPool(threads, max_threads)
        # grpc-stubs name ThreadPoolExecutor; grpc itself only calls submit() on any concurrent.futures.Executor.
        self.server: Any = grpc.server(self.pool, options=SERVER_OPTIONS)  # type: ignore[arg-type]
        self._health = health_sync.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)

    async def set_health(self, service: str, serving: bool) -> None:
        self._health.set(service, _status(serving))

    async def start(self, key: str, address: str) -> int:
        port = _bind(self.server, key, address)
        self.server.start()
        return port

    async def stop(self, grace: float) -> None:
        # The loop keeps running while in-flight Checks drain: those waiting on a store read finish on it.
        stopped = self.server.stop(grace)
        # Bounded like everything at exit: the executor thread waiting here is joined when the process ends.
        await asyncio.to_thread(stopped.wait, grace + 2.0)
        self.pool.shutdown(wait=False)

    async def enter_graceful_shutdown(self) -> None:
        self._health.enter_graceful_shutdown()


class AsyncListener:
    """A ``grpc.aio`` server (the SessionService is asyncio code), with the asyncio health servicer."""

    def __init__(self, interceptors: Sequence[Any] | None = None, health: Any | None = None) -> None:
        self.server: Any = grpc.aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
        self._health = health if health is not None else health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)

    @property
    def health(self) -> Any:
        return self._health

    async def set_health(self, service: str, serving: bool) -> None:
        await self._health.set(service, _status(serving))

    async def start(self, key: str, address: str) -> int:
        port = _bind(self.server, key, address)
        await self.server.start()
        return port

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)

    async def enter_graceful_shutdown(self) -> None:
        await self._health.enter_graceful_shutdown()
