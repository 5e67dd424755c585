"""Opening clients from redis.url: which client each scheme gets, and clear errors for URLs that cannot work."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from sidecar.errors import BadInput
from sidecar.store.connect import RedisSettings, open_client


def settings(url: str, **extra: object) -> RedisSettings:
    return RedisSettings(url=url, timeout=0.15, **extra)  # type: ignore[arg-type]


def test_standalone_url_gets_a_bounded_blocking_pool_with_the_deadline() -> None:
    client = open_client(settings("redis://127.0.0.1:6390/2", max_connections=7))
    assert isinstance(client, aioredis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, aioredis.BlockingConnectionPool)
    assert pool.max_connections == 7
    assert pool.connection_kwargs["socket_timeout"] == 0.15
    assert pool.connection_kwargs["db"] == 2


def test_credentials_from_settings_override_the_url() -> None:
    client = open_client(settings("redis://u:url-pass@127.0.0.1:6390/0", username="app", password="file-pass"))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("app", "file-pass")


def test_rediss_verifies_certificates_by_default() -> None:
    client = open_client(settings("rediss://127.0.0.1:6390/0"))
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True


def test_sentinel_url_gets_a_master_client_with_separate_sentinel_auth() -> None:
    client = open_client(
        settings("redis+sentinel://m-user:m-pass@127.0.0.1:26390,[::1]:26391/mymaster/3", sentinel_password="s-pass")
    )
    assert isinstance(client, aioredis.Redis)
    pool = client.connection_pool
    assert pool.service_name == "mymaster"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["password"] == "m-pass"
    assert pool.connection_kwargs["db"] == 3
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert len(sentinels) == 2
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "s-pass"


def test_cluster_url_gets_a_cluster_client_reading_from_primaries() -> None:
    client = open_client(settings("redis+cluster://127.0.0.1:7000,127.0.0.1:7001"))
    assert isinstance(client, RedisCluster)
    assert client.read_from_replicas is False
    assert client.load_balancing_strategy is None


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("memcached://127.0.0.1:11211", "unsupported scheme"),
        ("redis+sentinel://127.0.0.1:26379", "names the master"),
        ("redis+sentinel://127.0.0.1:26379/m/x/y", "/master-name[/db]"),
        ("redis+sentinel://127.0.0.1:notaport/m", "invalid port"),
        ("redis+cluster:///", "no host"),
        ("redis+cluster://127.0.0.1:7000/1", "no path"),
        ("redis+cluster://:7000", "invalid host"),
    ],
)
def test_unusable_urls_are_bad_input_naming_redis_url(url: str, needle: str) -> None:
    with pytest.raises(BadInput, match=r"redis\.url") as raised:
        open_client(settings(url))
    assert needle in str(raised.value)
