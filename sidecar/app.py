"""Composition root: config → store → core → servers; signals and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisClusterException, RedisError

from sidecar import logs
from sidecar.admin import AdminServer, raise_open_files_limit
from sidecar.api import servicer as session_api
from sidecar.api.auth import BearerTokenInterceptor
from sidecar.authz import grpc_v3
from sidecar.authz.assertion_issuer import AssertionIssuer
from sidecar.authz.forwarded import DEFAULT_TRUST, ForwardedTrust
from sidecar.authz.http import HttpAuthzServer
from sidecar.authz.observer import DecisionObserver
from sidecar.authz.service import AuthzService
from sidecar.config import Config
from sidecar.core.abuse import RepeatedInvalidTokens
from sidecar.core.decision import EdgeSettings
from sidecar.core.policy import Route, RoutePolicy
from sidecar.core.sealing import Sealer
from sidecar.core.session import SessionRecord
from sidecar.core.tokens import KeyRing
from sidecar.errors import ConfigError, RuntimeFailure, StoreError
from sidecar.health import StoreHealth
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.metrics import Metrics, exposition, process_registry
from sidecar.sources.base import SessionSource
from sidecar.sources.cached import CachedSource, LocalEvictions
from sidecar.sources.configured import configured_sources
from sidecar.sources.native import NativeSource
from sidecar.store.base import SessionStore
from sidecar.store.cache import SessionCache
from sidecar.store.connect import RedisSettings
from sidecar.store.invalidation import InvalidationListener
from sidecar.store.metered import MeteredStore
from sidecar.store.redis import RedisStore
from sidecar.store.stale import StaleSessions

log = logging.getLogger("sidecar")

AUTHZ_SERVICE_NAME = "envoy.service.auth.v3.Authorization"
SHUTDOWN_GRACE_SECONDS = 5.0
METRICS_REFRESH_SECONDS = 1.0
# The CLI is not on a request path: give a slow store a fair chance before calling it unreachable.
CLI_STORE_TIMEOUT = 3.0
# redis-py errors the store may let through unmapped: RedisClusterException (a Cluster with no reachable node) is
# not a RedisError. Caught where a traceback would otherwise reach the operator.
UNMAPPED_STORE_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def edge_settings(config: Config, sources: Sequence[SessionSource] = ()) -> EdgeSettings:
    """The core's settings; ``sources``: their cookies are the session cookies (default: cookie.name's)."""
    headers = config.headers
    return EdgeSettings(
        # The 401 challenge names the first source's cookie: the one a client is most likely to lack.
        cookie_name=sources[0].cookie_names[0] if sources else config.cookie.name,
        cookie_names=tuple(name for source in sources for name in source.cookie_names),
        strip_upstream=config.cookie.strip_upstream,
        user_id_header=headers.user_id,
        email_header=headers.email,
        roles_header=headers.roles,
        session_header=headers.session,
        strip_prefixes=tuple(headers.strip_prefixes),
        login_url=config.deny.login_url,
        policy=RoutePolicy.of(Route(r.prefix, r.public, tuple(r.roles)) for r in config.routes),
        max_header_bytes=headers.max_bytes,
        # Removed from every allow that does not sign one, enabled or not: a client's copy never reaches upstream.
        assertion_header=config.assertion.header,
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
        sealer=Sealer(
            tuple((key.kid, key.secret) for key in config.session.encryption_keys),
            accept_plain=config.session.accept_unsealed,
        ),
        wait_replicas=config.redis.wait_replicas,
        wait_timeout=config.redis.wait_timeout,
    )


def session_manager(config: Config, store: SessionStore, keys: KeyRingSource | None = None) -> SessionManager:
    """The SessionManager of the CLI and of the SessionService API; ``keys``: share the request path's ring."""
    return SessionManager(
        store,
        keys if keys is not None else KeyRingSource(store, configured_key_ring(config)),
        cookie_name=config.cookie.name,
        idle_timeout=config.session.idle_timeout,
        absolute_timeout=config.session.absolute_timeout,
        max_per_user=config.session.max_per_user,
    )


def configure_logging(level: str, fmt: str = "json") -> None:
    logs.configure_logging(level, fmt)


def grpc_server(
    config: Config, service: AuthzService, store: SessionStore, keys: KeyRingSource
) -> tuple[grpc.aio.Server, list[str]]:
    """The gRPC server of listen.grpc with ext_authz and, when api.enabled and listen.api is "", the
    SessionService; and the names of the services whose health follows the store.

    The SessionService uses the same store and key ring as the request path (a token it issues verifies at once)
    and its methods need the bearer token. Without the API on this server there is no interceptor, so Check pays
    nothing for it; with it, Check and grpc.health.v1 still need no token (Envoy calls them).
    """
    shared_api = config.api.enabled and not config.listen.api
    interceptors = [BearerTokenInterceptor(config.api.token)] if shared_api else None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=interceptors)
    grpc_v3.add_to_server(server, service)
    health_names = [AUTHZ_SERVICE_NAME]
    if shared_api:
        session_api.add_to_server(server, session_manager(config, store, keys))
        health_names.append(session_api.SERVICE_NAME)
    return server, health_names


def api_server(config: Config, store: SessionStore, keys: KeyRingSource) -> grpc.aio.Server | None:
    """The SessionService's own gRPC server for listen.api (None unless api.enabled and listen.api are set): the
    API can then be reachable by login services only (another interface, a NetworkPolicy on its port) while
    listen.grpc is reachable by Envoy only."""
    if not (config.api.enabled and config.listen.api):
        return None
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0)], interceptors=[BearerTokenInterceptor(config.api.token)]
    )
    session_api.add_to_server(server, session_manager(config, store, keys))
    return server


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


async def start_grpc(running: contextlib.AsyncExitStack, server: grpc.aio.Server, key: str, address: str) -> None:
    """Bind ``server`` to ``address`` (the config key ``listen.<key>``), start it, and stop it with ``running``."""
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeFailure(f"listen.{key}: cannot listen on {address} ({exc})") from None
    await server.start()
    running.push_async_callback(server.stop, SHUTDOWN_GRACE_SECONDS)


def native_source(
    config: Config, store: RedisStore, reads: SessionStore, keys: KeyRingSource
) -> tuple[CachedSource, InvalidationListener | None]:
    """The native source reading ``reads`` (the store, or it metered), behind this process's memory: the cache
    and failure_policy stale's last known identities when cache.enabled (kept honest by ``store``'s invalidation
    channel, returned to be started), the refused-records memo always."""
    native = NativeSource(reads, keys, config.cookie.name)
    if not config.cache.enabled:
        return CachedSource(native), None
    stale = None
    if config.redis.failure_policy == "stale":
        stale = StaleSessions(max_age=config.redis.stale_for, max_entries=config.cache.max_entries)
    cache = SessionCache(ttl=config.cache.ttl, max_entries=config.cache.max_entries, max_bytes=config.cache.max_bytes)
    source = CachedSource(native, cache=cache, stale=stale)
    return source, InvalidationListener(store.client, store.invalidation_channel, source)


class SwappableAssertions:
    """The assertion issuer in use, replaced in place when SIGHUP re-reads the keys: the request path and the
    JWKS responder always see the same one, and nothing restarts (key rotation without downtime)."""

    def __init__(self, issuer: AssertionIssuer) -> None:
        self.current = issuer

    @property
    def header(self) -> str:
        return self.current.header

    def issue(self, record: SessionRecord, host: str, context: Mapping[str, str], now: float) -> str | None:
        return self.current.issue(record, host, context, now)

    def jwks_json(self) -> bytes:
        return self.current.jwks_json()


def assertion_issuer(config: Config) -> SwappableAssertions | None:
    return SwappableAssertions(AssertionIssuer.from_config(config.assertion)) if config.assertion.enabled else None


def reload_assertions(running: Config, fresh: Config, assertions: SwappableAssertions | None) -> str:
    """Apply ``fresh``'s assertion section (SIGHUP); what happened, for the log. Only the assertion keys and
    settings are reloaded; anything else in the file waits for a restart."""
    if fresh.assertion.enabled != running.assertion.enabled or assertions is None:
        return "assertion.enabled changed or is off: restart to apply"
    try:
        issuer = AssertionIssuer.from_config(fresh.assertion)
    except ValueError as exc:
        return f"assertion keys not reloaded, the old ones stay in use: {exc}"
    assertions.current = issuer
    published = ", ".join(key.kid for key in fresh.assertion.keys)
    note = f"assertion keys reloaded: {issuer.signing_kid} signs, {published} published"
    if fresh.model_copy(update={"assertion": running.assertion}) != running:
        note += "; other changed settings need a restart"
    return note


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


@dataclass
class RequestPath:
    """What answers a Check, built from the config: the store (raw and metered), the sources, the service; and
    ``sessions``, the store the SessionService writes through (its revocations leave this replica's memory at
    once)."""

    metrics: Metrics
    store: RedisStore
    metered: MeteredStore
    sessions: SessionStore
    keys: KeyRingSource
    source: CachedSource
    observer: DecisionObserver
    issuer: SwappableAssertions | None
    service: AuthzService

    @property
    def cache(self) -> SessionCache | None:
        return self.source.cache


def request_path(config: Config, metrics: Metrics, running: contextlib.AsyncExitStack) -> RequestPath:
    store = open_store(config, config.redis.timeout)
    running.push_async_callback(store.close)
    metered = MeteredStore(store, metrics)
    keys = KeyRingSource(store, configured_key_ring(config))
    source, listener = native_source(config, store, metered, keys)
    if listener is not None:
        listener.start()
        running.push_async_callback(listener.stop)
    sources, closers = configured_sources(config, source, store.client)
    for close in closers:
        running.push_async_callback(close)
    observer = DecisionObserver(metrics, sample_allows=config.log.sample_allows, tracker=RepeatedInvalidTokens())
    issuer = assertion_issuer(config)
    service = AuthzService(
        edge_settings(config, sources),
        sources=sources,
        deadline=config.redis.timeout,
        observer=observer,
        assertions=issuer,
    )
    sessions = LocalEvictions(metered, source.invalidate)
    return RequestPath(metrics, store, metered, sessions, keys, source, observer, issuer, service)


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
    async with contextlib.AsyncExitStack() as running:
        registry = process_registry()
        metrics = Metrics(registry)
        metrics.workers.set(1)
        path = request_path(config, metrics, running)

        server, health_names = grpc_server(config, path.service, path.sessions, path.keys)
        api = api_server(config, path.sessions, path.keys)
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        if api is not None:
            # One health servicer on both ports: the API's callers probe the port they call, and both follow the store.
            health_pb2_grpc.add_HealthServicer_to_server(health, api)
            health_names.append(session_api.SERVICE_NAME)
        for name in health_names:
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
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
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for name in health_names:
                await health.set(name, status)

        store_health = StoreHealth(path.metered.ping, readiness_changed, timeout=max(config.redis.timeout, 0.5))
        store_health.start()
        running.push_async_callback(store_health.stop)
        await start_observability(config, running, registry, path, lambda: store_health.ready)

        with contextlib.suppress(StoreError, TimeoutError, *UNMAPPED_STORE_ERRORS):
            # Warm the key ring so the first request does not pay for it; a store down now is retried lazily.
            async with asyncio.timeout(max(config.redis.timeout, 1.0)):
                await path.keys.ring()
        await warn_if_the_key_ring_may_be_evicted(config, path.store)

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
        await health.enter_graceful_shutdown()


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


def forwarded_trust(config: Config) -> ForwardedTrust:
    """``forward_auth.*`` as the HTTP adapter reads it."""
    return ForwardedTrust(proxy=config.forward_auth.proxy, trusted_hops=config.forward_auth.trusted_hops)


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
    host, port = split_address(address)
    try:
        await server.start(host, port)
    except OSError as exc:
        raise RuntimeFailure(f"listen.http: cannot listen on {address} ({exc})") from None
    running.push_async_callback(server.stop, SHUTDOWN_GRACE_SECONDS)
    bound_host, bound_port = server.address
    log.info("serving HTTP ext_authz on %s:%d (forward-auth: /forward-auth)", bound_host, bound_port)
    return server


async def start_admin(admin: AdminServer, address: str, jwks: bool = False) -> None:
    host, port = split_address(address)
    try:
        await admin.start(host, port)
    except OSError as exc:
        raise RuntimeFailure(f"listen.admin: cannot listen on {address} ({exc})") from None
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
