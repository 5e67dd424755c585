"""Opening a Redis client from ``redis.url`` and the connection settings: standalone, TLS, Sentinel, Cluster.

    redis://[user:pass@]host:port/db        rediss://...  (TLS, certificate verification on by default)
    unix:///path/to/redis.sock?db=0
    redis+sentinel://host:port,host:port/master-name[/db]   (Sentinel auth: redis.sentinel_username/_password)
    redis+cluster://host:port,host:port                     (writes and authorization reads on primaries only)

Every client bounds connecting and each command by ``timeout`` and retries a failed command at most twice with
jittered backoff; the request path puts its own deadline over all of it. A command that timed out may have run all
the same, so the store's writes are safe to replay (store/redis_scripts.py: a replay answers what the first run did).
Standalone clients wait for a free connection (up to ``timeout``) instead of failing when the pool is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.errors import BadInput

SENTINEL = "redis+sentinel"
CLUSTER = "redis+cluster"
STANDALONE = ("redis", "rediss", "unix")
SCHEMES = (*STANDALONE, SENTINEL, CLUSTER)
RETRIES = 2

RedisClient = aioredis.Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str
    timeout: float
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    max_connections: int = 64


def _hosts(netloc_hosts: str, default_port: int) -> list[tuple[str, int]]:
    hosts = []
    for raw in netloc_hosts.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise BadInput(f"redis.url: invalid port in {item!r}") from None
        if not host or not 0 < port < 65536:
            raise BadInput(f"redis.url: invalid host:port {item!r}")
        hosts.append((host, port))
    if not hosts:
        raise BadInput("redis.url: no host given")
    return hosts


def _split_multi_host(url: str) -> tuple[str | None, str | None, list[tuple[str, int]], list[str]]:
    """(username, password, hosts, path segments) of a redis+sentinel:// or redis+cluster:// URL."""
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    default_port = 26379 if url.startswith(SENTINEL) else 6379
    return username, password, _hosts(hostlist, default_port), [unquote(p) for p in path.split("/") if p]


def _retry() -> Retry:
    return Retry(EqualJitterBackoff(cap=0.1, base=0.005), RETRIES)


def _tls(settings: RedisSettings) -> dict[str, Any]:
    return {
        "ssl_ca_certs": settings.tls_ca_file or None,
        "ssl_certfile": settings.tls_cert_file or None,
        "ssl_keyfile": settings.tls_key_file or None,
        "ssl_cert_reqs": "required" if settings.tls_verify else "none",
        "ssl_check_hostname": settings.tls_verify,
    }


def _common(settings: RedisSettings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "retry": _retry(),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def open_client(settings: RedisSettings) -> RedisClient:
    """A client for ``settings.url``; raises BadInput naming redis.url for a URL it cannot use."""
    scheme = settings.url.partition("://")[0]
    if scheme not in SCHEMES:
        raise BadInput(f"redis.url: unsupported scheme {scheme!r} (use {', '.join(s + '://' for s in SCHEMES)})")
    try:
        if scheme == SENTINEL:
            return _sentinel(settings)
        if scheme == CLUSTER:
            return _cluster(settings)
        return _standalone(settings, tls=scheme == "rediss")
    except (ValueError, TypeError) as exc:
        raise BadInput(f"redis.url: {exc}") from None


def _standalone(settings: RedisSettings, *, tls: bool) -> aioredis.Redis:
    options = _common(settings)
    if tls:
        options.update(_tls(settings))
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url, max_connections=settings.max_connections, timeout=settings.timeout, **options
    )
    # Credentials from the config (files, env) win over ones written in the URL.
    pool.connection_kwargs.update(
        {key: value for key, value in (("username", settings.username), ("password", settings.password)) if value}
    )
    return aioredis.Redis(connection_pool=pool)


def _sentinel(settings: RedisSettings) -> aioredis.Redis:
    username, password, hosts, path = _split_multi_host(settings.url)
    if not path:
        raise BadInput(
            "redis.url: a redis+sentinel:// URL names the master: redis+sentinel://h:26379,h2:26379/mymaster"
        )
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise BadInput("redis.url: the path of a redis+sentinel:// URL is /master-name[/db]")
    sentinel_auth: dict[str, Any] = {
        key: value
        for key, value in (("username", settings.sentinel_username), ("password", settings.sentinel_password))
        if value
    }
    master_auth: dict[str, Any] = {
        key: value
        for key, value in (("username", settings.username or username), ("password", settings.password or password))
        if value
    }
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts,
        sentinel_kwargs={
            "socket_timeout": settings.timeout,
            "socket_connect_timeout": settings.timeout,
            **sentinel_auth,
        },
        **_common(settings),
        **master_auth,
        db=int(path[1]) if len(path) == 2 else 0,
        max_connections=settings.max_connections,
    )
    master: aioredis.Redis = sentinel.master_for(path[0])
    return master


def _cluster(settings: RedisSettings) -> RedisCluster:
    username, password, hosts, path = _split_multi_host(settings.url)
    if path:
        raise BadInput("redis.url: a redis+cluster:// URL has no path (Cluster has only database 0)")
    auth: dict[str, Any] = {
        key: value
        for key, value in (("username", settings.username or username), ("password", settings.password or password))
        if value
    }
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in hosts],
        require_full_coverage=True,  # and, by default, every read goes to the slot's primary
        max_connections=settings.max_connections,
        **_common(settings),
        **auth,
    )
