"""Composition root: config → store → core → servers; signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisClusterException, RedisError

from sidecar import logs
from sidecar.admin import AdminServer
from sidecar.api import servicer as session_api
from sidecar.api.auth import BearerTokenInterceptor
from sidecar.authz import grpc_v3
from sidecar.authz.forwarded import DEFAULT_TRUST, ForwardedTrust
from sidecar.authz.http import HttpAuthzServer
from sidecar.authz.observer import DecisionObserver
from sidecar.authz.service import AuthzService
from sidecar.config import Config
from sidecar.config.models.listen import unix_path
from sidecar.errors import ConfigError, RuntimeFailure, StoreError
from sidecar.grpcserver import AsyncListener, GrpcListener, ThreadedListener
from sidecar.health import StoreHealth
from sidecar.httpserver.listener import HttpListener, raise_open_files_limit
from sidecar.keyring import KeyRingSource
from sidecar.metrics import Metrics, exposition, process_registry
from sidecar.shutdown import BoundedStops
from sidecar.store.base import SessionStore
from sidecar.store.cache import SessionCache
from sidecar.store.redis import RedisStore
from sidecar.wiring import RequestPath, forwarded_trust, reload_assertions, request_path, session_manager

log = logging.getLogger("sidecar")

AUTHZ_SERVICE_NAME = grpc_v3.SERVICE_NAME
SHUTDOWN_GRACE_SECONDS = 5.0
METRICS_REFRESH_SECONDS = 1.0
# How long past the store deadline a handler thread waits for a Check finishing on the event loop (which answers
# within the deadline unless it is stopping or stalled) before it denies with 503.
CHECK_WAIT_MARGIN_SECONDS = 1.0
# redis-py errors the store may let through unmapped: RedisClusterException (a Cluster with no reachable node) is
# not a RedisError. Caught where a traceback would otherwise reach the operator.
UNMAPPED_STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def configure_logging(level: str, fmt: str = "json") -> None:
    logs.configure_logging(level, fmt)


def grpc_server(
    config: Config, service: AuthzService, store: SessionStore, keys: KeyRingSource
) -> tuple[GrpcListener, list[str]]:
    """The gRPC server of listen.grpc with ext_authz and, when api.enabled and listen.api is "", the
    SessionService; and the names of the services whose health follows the store.

    Alone with health, ext_authz is served by handler threads, ``listen.grpc_threads`` at once
    (``grpcserver.ThreadedListener``: cache hits never wait for the event loop); with ``grpc_threads: 0``, on the
    event loop (grpc.aio). Sharing the port with the SessionService, whose methods need the bearer token, it is
    an asyncio server with the token interceptor; Check and grpc.health.v1 still need no token (Envoy calls them).
    The SessionService uses the same store and key ring as the request path (a token it issues verifies at once).
    """
    shared_api = config.api.enabled and not config.listen.api
    health_names = [AUTHZ_SERVICE_NAME]
    if not shared_api and config.listen.grpc_threads == 0:
        on_loop = AsyncListener()
        grpc_v3.add_to_server(on_loop.server, service)
        return on_loop, health_names
    if not shared_api:
        threaded = ThreadedListener(config.listen.grpc_threads)
        wait = config.redis.timeout + CHECK_WAIT_MARGIN_SECONDS
        loop = asyncio.get_running_loop()
        grpc_v3.add_to_threaded_server(threaded.server, service, loop, wait, threaded.pool.released)
        return threaded, health_names
    shared = AsyncListener(interceptors=[BearerTokenInterceptor(config.api.token)])
    grpc_v3.add_to_server(shared.server, service)
    session_api.add_to_server(shared.server, session_manager(config, store, keys))
    health_names.append(session_api.SERVICE_NAME)
    return shared, health_names


def api_server(config: Config, store: SessionStore, keys: KeyRingSource) -> AsyncListener | None:
    """The SessionService's own gRPC server for listen.api (None unless api.enabled and listen.api are set): the
    API can then be reachable by login services only (another interface, a NetworkPolicy on its port) while
    listen.grpc is reachable by Envoy only."""
    if not (config.api.enabled and config.listen.api):
        return None
    api = AsyncListener(interceptors=[BearerTokenInterceptor(config.api.token)])
    session_api.add_to_server(api.server, session_manager(config, store, keys))
    return api


def log_serving(config: Config) -> None:
    log.info("serving ext_authz and grpc.health.v1 on %s", config.listen.grpc)
    if config.api.enabled:
        where = config.listen.api or config.listen.grpc
        log.info("SessionService API enabled on %s (bearer token from %s)", where, config.api.token_file)
    elif config.listen.api:
        log.warning(
            "SessionService API disabled (api.enabled: false): nothing listens on listen.api %s", config.listen.api
        )
    else:
        log.info("SessionService API disabled (api.enabled: false)")


async def start_grpc(running: contextlib.AsyncExitStack, listener: GrpcListener, key: str, address: str) -> None:
    """Bind ``listener`` to ``address`` (the config key ``listen.<key>``), start it, and stop it with ``running``."""
    await listener.start(key, address)
    running.push_async_callback(listener.stop, SHUTDOWN_GRACE_SECONDS)


def metrics_refresher(
    metrics: Metrics, cache: SessionCache | None, observer: DecisionObserver, ready: Callable[[], bool]
) -> Callable[[], None]:
    """Copies states into gauges and the cache's own counters into Prometheus ones (see ``sidecar.metrics``)."""

    def refresh() -> None:
        if cache is not None:
            metrics.sync_cache(cache.stats())
        observer.sync()
        metrics.store_ready.set(1 if ready() else 0)

    return refresh


async def every(interval: float, action: Callable[[], None]) -> None:
    while True:
        try:
            action()
        except Exception:  # a metrics hiccup must not stop the refreshes (or anything else)
            log.exception("periodic metrics refresh failed")
        await asyncio.sleep(interval)


async def serve(config: Config, reload: Callable[[], Config] | None = None) -> None:
    """Serve until SIGTERM/SIGINT. ``reload`` re-reads the configuration on SIGHUP (the assertion keys)."""
    configure_logging(config.log.level, config.log.format)
    # Before any port opens: a SIGTERM while the rest starts (the key ring warm-up, the eviction check) must still
    # drain and exit 0, not kill the process with the default action.
    stop = stop_on_signals()
    before, after = raise_open_files_limit()
    if before != after:
        # Each of listen.http and listen.admin may hold a share of the limit (listen.max_connections at most).
        log.info("open-files limit raised from %s to %s", before, after)
    # Everything started is stopped in reverse order, on a signal or on a failure to start.
    async with BoundedStops() as running:
        registry = process_registry()
        metrics = Metrics(registry)
        metrics.workers.set(1)
        path = request_path(config, metrics, running)

        server, health_names = grpc_server(config, path.service, path.sessions, path.keys)
        api = api_server(config, path.sessions, path.keys)
        # Each port's health servicer answers for the services its callers use; all follow the store.
        health: list[tuple[GrpcListener, list[str]]] = [(server, health_names)]
        if api is not None:
            health.append((api, [AUTHZ_SERVICE_NAME, session_api.SERVICE_NAME]))

        async def set_health(ready: bool) -> None:
            for listener, names in health:
                for name in names:
                    await listener.set_health(name, ready)

        await set_health(True)
        await start_grpc(running, server, "grpc", config.listen.grpc)
        if api is not None:
            await start_grpc(running, api, "api", config.listen.api)
        log_serving(config)
        await start_http(
            running,
            config.listen.http,
            path.service,
            forwarded=forwarded_trust(config),
            idle_timeout=config.listen.idle_timeout,
            max_connections=config.listen.max_connections,
        )

        async def readiness_changed(ready: bool) -> None:
            # "" stays SERVING (the process answers, public routes work); the named services follow the store,
            # so an Envoy health check on them routes around a replica that has lost its store.
            await set_health(ready)

        store_health = StoreHealth(path.metered.ping, readiness_changed, timeout=max(config.redis.timeout, 0.5))
        store_health.start()
        running.push_async_callback(store_health.stop)
        await start_observability(config, running, registry, path, lambda: store_health.ready)

        with contextlib.suppress(StoreError, TimeoutError, *UNMAPPED_STORE_ERRORS):
            # Warm the key ring so the first request does not pay for it; a store down now is retried lazily.
            async with asyncio.timeout(max(config.redis.timeout, 1.0)):
                await path.keys.ring()
        await warn_if_the_key_ring_may_be_evicted(config, path.store)
        # What start-up built lives as long as the process: out of the collector's sight, a collection pass
        # no longer walks it (a few % of a Check's CPU, issue #14).
        gc.freeze()

        def hangup() -> None:
            if reload is None:
                log.warning("SIGHUP: nothing to reload (no configuration source)")
                return
            try:
                fresh = reload()
            except ConfigError as exc:
                log.error("SIGHUP: the configuration has problems, nothing reloaded: %s", exc)
                return
            log.info("SIGHUP: %s", reload_assertions(config, fresh, path.issuer))

        await until_signalled(stop, hangup)
        log.info("shutting down: draining in-flight checks for up to %.0fs", SHUTDOWN_GRACE_SECONDS)
        for listener, _ in health:
            await listener.enter_graceful_shutdown()


async def warn_if_the_key_ring_may_be_evicted(config: Config, store: RedisStore) -> None:
    """Log a warning when the server's maxmemory-policy may evict the shared token key ring (only used when
    token.keys is not set): that would log every user out. Never fails the start."""
    if config.token.keys:
        return
    with contextlib.suppress(TimeoutError, *UNMAPPED_STORE_ERRORS):
        async with asyncio.timeout(max(config.redis.timeout, 1.0)):
            if warning := await store.eviction_warning():
                log.warning("%s", warning)


async def start_observability(
    config: Config,
    running: contextlib.AsyncExitStack,
    registry: CollectorRegistry,
    path: RequestPath,
    ready: Callable[[], bool],
) -> None:
    """The periodic metrics refresh and, unless listen.admin is "", the admin listener (health, metrics, JWKS)."""
    refresh = metrics_refresher(path.metrics, path.cache, path.observer, ready)
    refresher = asyncio.get_running_loop().create_task(every(METRICS_REFRESH_SECONDS, refresh))
    running.callback(refresher.cancel)
    if not config.listen.admin:
        return

    def render_metrics() -> bytes:
        refresh()  # this process's states are current; other workers refresh their own every second
        return exposition(registry)

    jwks = path.issuer.jwks_json if path.issuer is not None else None
    admin = AdminServer(
        ready,
        metrics=render_metrics,
        jwks=jwks,
        idle_timeout=config.listen.idle_timeout,
        max_connections=config.listen.max_connections,
    )
    await start_admin(admin, config.listen.admin, jwks is not None)
    running.push_async_callback(admin.stop)


async def start_http(
    running: contextlib.AsyncExitStack,
    address: str,
    service: AuthzService,
    *,
    forwarded: ForwardedTrust = DEFAULT_TRUST,
    idle_timeout: float = 60.0,
    max_connections: int = 1000,
) -> HttpAuthzServer | None:
    """The HTTP ext_authz / forward-auth listener on ``address`` (``listen.http``; "" disables it), stopped with
    ``running``."""
    if not address:
        log.info("HTTP ext_authz disabled (listen.http is empty)")
        return None
    server = HttpAuthzServer(service, forwarded=forwarded, idle_timeout=idle_timeout, max_connections=max_connections)
    await listen_on(server, "http", address)
    running.push_async_callback(server.stop, SHUTDOWN_GRACE_SECONDS)
    bound_host, bound_port = server.address
    where = f"unix:{bound_host}" if unix_path(address) is not None else f"{bound_host}:{bound_port}"
    log.info("serving HTTP ext_authz on %s (forward-auth: /forward-auth)", where)
    return server


async def listen_on(listener: HttpListener[Any, Any, Any], key: str, address: str) -> None:
    """Start ``listener`` on ``address`` (``listen.<key>``): ``host:port``, ``[v6]:port`` or ``unix:/path``."""
    path = unix_path(address)
    try:
        if path is not None:
            await listener.start_unix(path)
        else:
            await listener.start(*split_address(address))
    except OSError as exc:
        raise RuntimeFailure(f"listen.{key}: cannot listen on {address} ({exc})") from None


async def start_admin(admin: AdminServer, address: str, jwks: bool = False) -> None:
    await listen_on(admin, "admin", address)
    served = "/healthz, /readyz, /metrics" + (" and /.well-known/jwks.json" if jwks else "")
    log.info("serving %s on %s", served, address)


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set from now on (installed on the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def until_signalled(stop: asyncio.Event | None = None, hangup: Callable[[], None] | None = None) -> None:
    """Wait for ``stop`` (SIGTERM/SIGINT; installed now when not given); SIGHUP calls ``hangup`` meanwhile."""
    stop = stop if stop is not None else stop_on_signals()
    if hangup is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup)
    await stop.wait()


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (validated by the config) as a (host, port) pair."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
