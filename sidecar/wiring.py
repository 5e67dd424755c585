"""What the config wires together: the store, the key ring, the session sources, the authorization service and
its assertions (the request path), and the session manager of the CLI and the API. No server is started here:
``sidecar.app`` starts and stops them."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sidecar.authz.assertion_issuer import AssertionIssuer
from sidecar.authz.forwarded import ForwardedTrust
from sidecar.authz.observer import DecisionObserver
from sidecar.authz.service import AuthzService
from sidecar.config import Config
from sidecar.core.abuse import RepeatedInvalidTokens
from sidecar.core.decision import EdgeSettings
from sidecar.core.policy import Route, RoutePolicy
from sidecar.core.sealing import Sealer
from sidecar.core.session import SessionRecord
from sidecar.core.tokens import KeyRing
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.metrics import Metrics
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


def forwarded_trust(config: Config) -> ForwardedTrust:
    """``forward_auth.*`` as the HTTP adapter reads it."""
    return ForwardedTrust(proxy=config.forward_auth.proxy, trusted_hops=config.forward_auth.trusted_hops)
