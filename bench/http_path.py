"""The CPU cost of ``listen.http``'s own layer per request (issue #14), in process: no socket, no kernel, no wrk.

A request as Envoy's ``http_service`` sends it (its request line and the headers ``envoy-http.yaml`` lets
through, plus the ones Envoy adds) is handed to ``HttpProtocol.data_received`` over and over on a stand-in
transport, and the answers are counted. Two modes:

- ``stub`` (default): the service is a constant, the allow a live session's cache hit gets (the same ``Allow``
  object every time, as a memoized one would be, or a fresh equal one with ``--fresh``), so what is timed is the
  adapter alone: parse, read (``RequestView``), encode, write bookkeeping.
- ``service``: a real ``AuthzService`` over an in-memory store with the session cache on and no observer, warmed
  by one miss; every timed request is a cache hit decided in ``begin``.

    python bench/http_path.py [--mode stub|service] [--requests 200000] [--repeat 5] [--profile]

Prints µs per request (the best and the median of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.authz.http import HttpAuthzServer  # noqa: E402
from sidecar.authz.service import AuthzService, Pending  # noqa: E402
from sidecar.core.decision import Allow, Decision  # noqa: E402
from sidecar.core.request import RequestView  # noqa: E402
from sidecar.httpserver.protocol import HttpProtocol  # noqa: E402


def envoy_request(cookie: str) -> bytes:
    """The head Envoy sends its ``http_service`` for ``GET /bench`` (allowed_headers, then what Envoy adds)."""
    return (
        "GET /bench HTTP/1.1\r\n"
        "host: 127.0.0.1:8080\r\n"
        f"cookie: SESSION={cookie}\r\n"
        "x-forwarded-proto: http\r\n"
        "x-request-id: 6b1e4f0c-3f1a-4f8e-9d53-2a8c1e0f7b11\r\n"
        "x-envoy-expected-rq-timeout-ms: 200\r\n"
        "content-length: 0\r\n"
        "\r\n"
    ).encode()


class Transport:
    """What ``HttpProtocol`` asks of an asyncio transport; writes are counted, never sent."""

    def __init__(self) -> None:
        self.answers = 0
        self.last = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.answers += 1
        self.last = data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def live_service() -> tuple[AuthzService, str]:
    """An AuthzService as ``serve`` builds it for a cache hit (no observer), and a live session's token."""
    from sidecar.keyring import KeyRingSource  # noqa: PLC0415
    from sidecar.lifecycle import SessionManager  # noqa: PLC0415
    from sidecar.sources.cached import CachedSource  # noqa: PLC0415
    from sidecar.sources.native import NativeSource  # noqa: PLC0415
    from sidecar.store.cache import SessionCache  # noqa: PLC0415
    from sidecar.store.memory import MemoryStore  # noqa: PLC0415
    from tests.support.edge import RING, SETTINGS  # noqa: PLC0415

    store = MemoryStore()
    keys = KeyRingSource(store, RING)
    cache = SessionCache(ttl=300.0, max_entries=1000, max_bytes=1 << 20)
    cache.live = True  # as when the invalidation channel is connected
    source = CachedSource(NativeSource(store, keys, "SESSION"), cache=cache)
    service = AuthzService(SETTINGS, sources=(source,), deadline=1.0)
    manager = SessionManager(store, keys, cookie_name="SESSION", idle_timeout=3600, absolute_timeout=7200)
    issued = await manager.create("bench")
    return service, issued.token


class Listener:
    def __init__(self, server: HttpAuthzServer) -> None:
        self.limits = server.limits
        self.log = server.log
        self.name = server.name

    def opened(self, connection: object) -> bool:
        return True

    def closed(self, connection: object) -> None:
        pass


async def run(args: argparse.Namespace) -> None:
    service, token = await live_service()
    warm = await service.check(RequestView("GET", "http", "h", "/bench", (("cookie", f"SESSION={token}"),)))
    if args.mode == "stub":
        server = HttpAuthzServer(service)
        decision = await service.check(
            RequestView("GET", "http", "h", "/bench", (("cookie", f"SESSION={token}"), ("x-forwarded-proto", "http")))
        )

        assert isinstance(decision, Allow), decision

        def begin(_request: RequestView) -> Decision | Pending:
            if args.fresh:  # an equal allow built anew, as the service does today (its frozen __init__ is timed)
                return Allow(decision.headers_to_set, decision.headers_to_remove, decision.user_id, decision.session_id)
            return decision

        server.handler = dataclasses.replace(server.handler, begin=begin)
    else:
        server = HttpAuthzServer(service)
    assert warm.status == 200, warm
    request = envoy_request(token)
    transport = Transport()
    protocol: HttpProtocol[Any, Any, Any] = HttpProtocol(server.handler, Listener(server))
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(request)
    assert transport.answers == 1 and transport.last.startswith(b"HTTP/1.1 200 OK"), transport.last
    n = args.requests
    results = []
    for _ in range(args.repeat):
        started = time.thread_time()  # CPU time: the machine is shared
        for _ in range(n):
            protocol.data_received(request)
        results.append((time.thread_time() - started) * 1e6 / n)
    assert transport.answers == 1 + n * args.repeat and not transport.closing
    print(f"{args.mode}: best {min(results):.2f} µs/request, median {statistics.median(results):.2f}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(n):
            protocol.data_received(request)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("stub", "service"), default="stub")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="stub: a new equal Allow per request")
    parser.add_argument("--profile", action="store_true", help="then one more run under cProfile")
    args = parser.parse_args()
    try:
        import uvloop  # noqa: PLC0415 - the event loop of `sidecar serve`

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
