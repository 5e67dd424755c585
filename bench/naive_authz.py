"""The naive ext_authz baseline of ``bench/throughput.py``: what a first, straightforward implementation does.

A plain ``grpc.aio`` Authorization servicer: find the ``SESSION`` cookie, one ``redis.asyncio`` GET of
``naive:<token>`` per request, and answer OK with ``x-user-id`` set (401 when the key is missing). No core, no
cache, no pre-built responses, no MAC check. It runs on uvloop when available, like ``sidecar serve``, so the
comparison measures the sidecar's request path and not the event loop.

    python bench/naive_authz.py --port 9300 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import grpc
import redis.asyncio as aioredis
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

KEY_PREFIX = "naive:"
COOKIE = "SESSION"


def session_cookie(request: Any) -> str | None:
    """The first ``SESSION`` cookie value, from raw headers (``encode_raw_headers``) or the headers map."""
    http = request.attributes.request.http
    values = [e.raw_value.decode() or e.value for e in http.header_map.headers if e.key.lower() == "cookie"]
    if not values and "cookie" in http.headers:
        values = [http.headers["cookie"]]
    for value in values:
        for part in value.split(";"):
            name, _, content = part.strip().partition("=")
            if name == COOKIE:
                return str(content)
    return None


class NaiveAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def Check(self, request: Any, context: Any) -> Any:  # the gRPC method's name
        token = session_cookie(request)
        user = await self._redis.get(KEY_PREFIX + token) if token else None
        if user is None:
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=code_pb2.UNAUTHENTICATED),
                denied_response=external_auth_pb2.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized)
                ),
            )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[
                    base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-user-id", value=str(user, "utf-8")))
                ]
            ),
        )


async def serve(port: int, redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(NaiveAuthorization(client), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description="naive ext_authz baseline (one Redis GET per Check)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True, help="redis:// URL")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    args = parser.parse_args()
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop  # noqa: PLC0415 - the same optional speed-up as `sidecar serve`

            uvloop.install()
    asyncio.run(serve(args.port, args.redis))


if __name__ == "__main__":
    main()
