"""Composition root: config → store → core → servers; signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

from sidecar.admin import AdminServer
from sidecar.authz import grpc_v3
from sidecar.authz.service import AuthzService
from sidecar.config import Config
from sidecar.core.decision import EdgeSettings
from sidecar.core.policy import Route, RoutePolicy
from sidecar.core.sealing import Sealer
from sidecar.core.tokens import KeyRing
from sidecar.errors import RuntimeFailure, StoreError
from sidecar.health import StoreHealth
from sidecar.sessions import KeyRingSource, SessionManager
from sidecar.store.connect import RedisSettings
from sidecar.store.redis import RedisStore

log = logging.getLogger("sidecar")

AUTHZ_SERVICE_NAME = "envoy.service.auth.v3.Authorization"
SHUTDOWN_GRACE_SECONDS = 5.0
# The CLI is not on a request path: give a slow store a fair chance before calling it unreachable.
CLI_STORE_TIMEOUT = 3.0


def edge_settings(config: Config) -> EdgeSettings:
    headers = config.headers
    return EdgeSettings(
        cookie_name=config.cookie.name,
        strip_upstream=config.cookie.strip_upstream,
        user_id_header=headers.user_id,
        email_header=headers.email,
        roles_header=headers.roles,
        session_header=headers.session,
        strip_prefixes=tuple(headers.strip_prefixes),
        login_url=config.deny.login_url,
        policy=RoutePolicy.of(Route(r.prefix, r.public, tuple(r.roles)) for r in config.routes),
    )


def configured_key_ring(config: Config) -> KeyRing | None:
    if not config.token.keys:
        return None
    return KeyRing.of((key.kid, key.secret) for key in config.token.keys)


def redis_settings(config: Config, timeout: float) -> RedisSettings:
    redis = config.redis
    return RedisSettings(
        url=redis.url,
        timeout=timeout,
        username=redis.username or None,
        password=redis.password or None,
        sentinel_username=redis.sentinel_username or None,
        sentinel_password=redis.sentinel_password or None,
        tls_ca_file=redis.tls_ca_file or None,
        tls_cert_file=redis.tls_cert_file or None,
        tls_key_file=redis.tls_key_file or None,
        tls_verify=redis.tls_verify,
        max_connections=redis.max_connections,
    )


def open_store(config: Config, timeout: float) -> RedisStore:
    return RedisStore.connect(
        redis_settings(config, timeout),
        config.redis.key_prefix,
        sealer=Sealer(tuple((key.kid, key.secret) for key in config.session.encryption_keys)),
        wait_replicas=config.redis.wait_replicas,
        wait_timeout=config.redis.wait_timeout,
    )


def session_manager(config: Config, store: RedisStore) -> SessionManager:
    return SessionManager(
        store,
        KeyRingSource(store, configured_key_ring(config)),
        cookie_name=config.cookie.name,
        idle_timeout=config.session.idle_timeout,
        absolute_timeout=config.session.absolute_timeout,
        max_per_user=config.session.max_per_user,
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


async def serve(config: Config) -> None:
    store = open_store(config, config.redis.timeout)
    keys = KeyRingSource(store, configured_key_ring(config))
    service = AuthzService(edge_settings(config), store, keys, deadline=config.redis.timeout)

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    grpc_v3.add_to_server(server, service)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set(AUTHZ_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    try:
        server.add_insecure_port(config.listen.grpc)
    except RuntimeError as exc:
        await store.close()
        raise RuntimeFailure(f"listen.grpc: cannot listen on {config.listen.grpc} ({exc})") from None
    await server.start()
    log.info("serving ext_authz and grpc.health.v1 on %s", config.listen.grpc)
    if config.listen.http:
        log.info("listen.http is not served by this version; only listen.grpc is")

    async def readiness_changed(ready: bool) -> None:
        # "" stays SERVING (the process answers, public routes work); the named service follows the store, so an
        # Envoy health check on it routes around a replica that has lost its store.
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await health.set(AUTHZ_SERVICE_NAME, status)

    store_health = StoreHealth(store.ping, readiness_changed, timeout=max(config.redis.timeout, 0.5))
    store_health.start()
    admin = AdminServer(lambda: store_health.ready)
    if config.listen.admin:
        host, port = split_address(config.listen.admin)
        try:
            await admin.start(host, port)
        except OSError as exc:
            await store_health.stop()
            await server.stop(0)
            await store.close()
            raise RuntimeFailure(f"listen.admin: cannot listen on {config.listen.admin} ({exc})") from None
        log.info("serving /healthz and /readyz on %s", config.listen.admin)

    with contextlib.suppress(StoreError, TimeoutError):
        # Warm the key ring so the first request does not pay for it; a store that is down now is retried lazily.
        async with asyncio.timeout(max(config.redis.timeout, 1.0)):
            await keys.ring()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight checks for up to %.0fs", SHUTDOWN_GRACE_SECONDS)
    await health.enter_graceful_shutdown()
    await admin.stop()
    await store_health.stop()
    await server.stop(SHUTDOWN_GRACE_SECONDS)
    await store.close()


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (validated by the config) as a (host, port) pair."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
