"""The sessions ``bench/throughput.py`` sends, and its revocation phase.

- native: one session made by ``SessionManager`` on the bench's Valkey (the sidecars' shared key ring), and the
  same token as the naive baseline's ``naive:<token>`` key;
- spring: a Spring Session hash around real Spring Security bytes (``tests/support/spring_session.py``: the
  serialized ``TransientSecurityContext`` of Spring Security 7.2 from ../shared/testdata, user ``user``) under
  ``spring:session:sessions:<uuid>``, cookie ``SESSION=<base64 of the uuid>`` as Spring's DefaultCookieSerializer
  writes it;
- express: ``sess:<id>`` holding express-session's JSON (``passport.user``), with a TTL as connect-redis sets it,
  cookie ``connect.sid=s%3A<id>.<HMAC-SHA256>`` signed as cookie-signature does.

For each kind a *bogus* cookie too: well formed (and signed, for Express) but naming no session.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from throughput_stack import EXPRESS_SECRET, KEY_PREFIX, LOOPBACK, ROOT, URL_PATH, Backend, BenchError

sys.path.insert(0, str(ROOT))

from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.store.redis import RedisStore
from tests.support import spring_session

COOKIE = "SESSION"  # the native cookie (the sidecar's default) and Spring Session's
SPRING_PREFIX = "spring:session:"
SPRING_VERSION = "7.2.x"
SPRING_CONTEXT = "core.context.TransientSecurityContext"  # user "user", ROLE_USER
EXPRESS_COOKIE = "connect.sid"
EXPRESS_TTL = 3600


def session_manager(store: RedisStore) -> SessionManager:
    # The key ring is the one the sidecars share through Valkey (token.keys is not configured).
    return SessionManager(
        store, KeyRingSource(store, None), cookie_name=COOKIE, idle_timeout=1800, absolute_timeout=43200
    )


async def create_session(redis_url: str, user: str) -> str:
    """A session every sidecar accepts, and the same token as a naive key; returns the token."""
    store = RedisStore.from_url(redis_url, KEY_PREFIX, timeout=2.0)
    raw = aioredis.from_url(redis_url)
    try:
        issued = await session_manager(store).create(user, email=f"{user}@example.com", roles=("dev",))
        await raw.set(f"naive:{issued.token}", user)
        return issued.token
    finally:
        await store.close()
        await raw.aclose()


def spring_available() -> str | None:
    """Why the Spring scenario cannot run here, or None."""
    path = spring_session.SAMPLES / SPRING_VERSION / f"{spring_session.SEC}{SPRING_CONTEXT}.serialized"
    return None if path.is_file() else f"not measured: {spring_session.NO_SAMPLES}"


def spring_cookie(sid: str) -> str:
    return f"{COOKIE}=" + base64.b64encode(sid.encode()).decode()


def plant_spring(client: redis.Redis) -> str:
    """A live Spring Session with an authenticated user; returns its cookie."""
    sid = str(uuid.uuid4())
    context = spring_session.sample(SPRING_VERSION, SPRING_CONTEXT)
    fields = spring_session.session_hash(context, int(time.time() * 1000))
    client.hset(f"{SPRING_PREFIX}sessions:{sid}", mapping=fields)  # type: ignore[arg-type]
    return spring_cookie(sid)


def express_cookie(sid: str) -> str:
    """``s:<id>.<unpadded base64 HMAC-SHA256>``, percent-encoded as express-session's setcookie writes it."""
    mac = base64.b64encode(hmac.new(EXPRESS_SECRET.encode(), sid.encode(), hashlib.sha256).digest()).decode()
    signed = "s%3A" + sid + "." + mac.rstrip("=").replace("+", "%2B").replace("/", "%2F")
    return f"{EXPRESS_COOKIE}={signed}"


def plant_express(client: redis.Redis, user: str) -> str:
    """A live express-session (passport login) with connect-redis's TTL; returns its cookie."""
    sid = secrets.token_urlsafe(24)  # uid-safe's 24 bytes
    expires = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() + EXPRESS_TTL))
    session = {
        "cookie": {"originalMaxAge": EXPRESS_TTL * 1000, "expires": expires, "httpOnly": True, "path": "/"},
        "passport": {"user": user},
    }
    client.set(f"sess:{sid}", json.dumps(session), ex=EXPRESS_TTL)
    return express_cookie(sid)


def plant_sessions(redis_url: str, user: str, *, spring: bool) -> tuple[dict[str, str], dict[str, str]]:
    """The live cookies per kind and, per kind, a well-formed cookie naming no session."""
    token = asyncio.run(create_session(redis_url, user))
    cookies = {"native": f"{COOKIE}={token}"}
    bogus = {"native": f"{COOKIE}=not-a-session"}
    client = redis.Redis.from_url(redis_url)
    try:
        cookies["express"] = plant_express(client, user)
        bogus["express"] = express_cookie(secrets.token_urlsafe(24))
        if spring:
            cookies["spring"] = plant_spring(client)
            bogus["spring"] = spring_cookie(str(uuid.uuid4()))
    finally:
        client.close()
    return cookies, bogus


# --------------------------------------------------------------------------------------------------- revocation


def check_request(cookie: str) -> Any:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.scheme, http.host, http.path = "GET", "http", "bench", URL_PATH
    http.header_map.headers.append(base_pb2.HeaderValue(key="cookie", raw_value=cookie.encode()))
    return request


@dataclass
class Revocations:
    delays_ms: list[float]  # revoke sent → the second sidecar's first denial (verified cache hits only)
    samples: int
    cached: int  # samples where the second sidecar answered from its cache before the revoke
    polls: list[int]


async def revocation(redis_url: str, first: Backend, second: Backend, samples: int) -> Revocations:
    store = RedisStore.from_url(redis_url, KEY_PREFIX, timeout=2.0)  # the third client; no replicas to WAIT for
    manager = session_manager(store)
    raw = aioredis.from_url(redis_url)
    channels = [grpc.aio.insecure_channel(f"{LOOPBACK}:{b.grpc_port}") for b in (first, second)]
    stub_a, stub_b = (external_auth_pb2_grpc.AuthorizationStub(c) for c in channels)

    async def allowed(stub: Any, request: Any) -> bool:
        reply = await stub.Check(request, timeout=2)
        return bool(reply.status.code == code_pb2.OK)

    async def answers_from_cache(request: Any) -> bool:
        await raw.config_resetstat()
        if not await allowed(stub_b, request):
            raise BenchError("revocation: the second sidecar denied a live session")
        stats = await raw.info("commandstats")
        return "cmdstat_evalsha" not in stats  # a resolve is one EVALSHA; a cache hit sends none

    result = Revocations([], samples, 0, [])
    try:
        # The caches serve hits only once their invalidation subscription is up: wait for that first.
        token = (await manager.create("revoke-warm")).token
        warm = check_request(f"{COOKIE}={token}")
        deadline = time.monotonic() + 10
        while not await answers_from_cache(warm):
            if time.monotonic() > deadline:
                raise BenchError("revocation: the second sidecar never answered from its cache")
            await asyncio.sleep(0.1)
        for i in range(samples):
            token = (await manager.create(f"revoke-{i}")).token
            request = check_request(f"{COOKIE}={token}")
            if not (await allowed(stub_a, request) and await allowed(stub_b, request)):
                raise BenchError("revocation: a new session was denied")
            cached = await answers_from_cache(request)
            sent = time.perf_counter()
            await manager.revoke(token)
            polls = 0
            while True:
                polls += 1
                if not await allowed(stub_b, request):
                    denied = time.perf_counter()
                    break
                if time.perf_counter() - sent > 5:
                    raise BenchError("revocation: the second sidecar still allows a revoked session after 5 s")
                await asyncio.sleep(0.001)
            if await allowed(stub_a, request):
                raise BenchError("revocation: the first sidecar still allows a revoked session")
            if cached:
                result.cached += 1
                result.delays_ms.append((denied - sent) * 1000)
                result.polls.append(polls)
    finally:
        for channel in channels:
            await channel.close(None)
        await store.close()
        await raw.aclose()
    return result
