"""What only the Redis implementation can get wrong: its key layout, bad stored data, and an unreachable server."""

from __future__ import annotations

import secrets
import socket
import time

import pytest
import redis.asyncio as aioredis

from sidecar.core.redact import redact_url
from sidecar.core.session import SessionRecord, new_session
from sidecar.core.tokens import KeyRing, mint_token, token_key
from sidecar.errors import BadInput, CorruptRecord, StoreUnavailable
from sidecar.store.redis import RedisStore

pytestmark = pytest.mark.integration


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plain_session(user: str) -> SessionRecord:
    return new_session(
        session_id="sid", user_id=user, email=None, roles=(), attributes={},
        idle_timeout=60, absolute_timeout=600, now=time.time(),
    )  # fmt: skip


@pytest.fixture
async def raw(valkey_url: str) -> aioredis.Redis:
    client = aioredis.from_url(valkey_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(valkey_url: str) -> RedisStore:
    s = RedisStore.from_url(valkey_url, f"it-{secrets.token_hex(4)}:", timeout=2.0)
    yield s
    await s.close()


async def test_redis_keys_hold_only_the_token_hash(store: RedisStore, raw: aioredis.Redis) -> None:
    prefix = store._prefix
    ring = KeyRing.of([("k1", b"k" * 32)])
    token = mint_token(ring, secrets.token_bytes(32))
    rec = plain_session("alice")
    await store.create(token_key(token), rec, 60_000)
    keys = [k.decode() for k in await raw.keys(f"{prefix}*")]
    assert sorted(keys) == sorted([f"{prefix}s:{token_key(token)}", f"{prefix}u:alice"])
    for k in keys:
        assert token not in k
        value = await raw.get(k) if k.startswith(f"{prefix}s:") else b"".join(await raw.smembers(k))
        assert token.encode() not in value


async def test_session_ttl_is_set_on_the_record_and_the_user_index(store: RedisStore, raw: aioredis.Redis) -> None:
    rec = plain_session("bob")
    k = secrets.token_hex(32)
    await store.create(k, rec, 60_000)
    assert 0 < await raw.pttl(f"{store._prefix}s:{k}") <= 60_000
    assert 0 < await raw.pttl(f"{store._prefix}u:bob") <= 60_000


@pytest.mark.parametrize(
    "stored",
    [
        b"not json",
        b"[]",
        b'{"v": 99}',
        b'{"v":1,"sid":"s","uid":"a\\r\\nx: y","email":null,"roles":[],"attrs":{},'
        b'"created":1,"seen":1,"idle":60,"abs":99999999999}',
    ],
    ids=["garbage", "array", "future-version", "crlf-in-user-id"],
)
async def test_unusable_stored_record_raises_corrupt_record(
    store: RedisStore, raw: aioredis.Redis, stored: bytes
) -> None:
    k = secrets.token_hex(32)
    await raw.set(f"{store._prefix}s:{k}", stored, ex=60)
    with pytest.raises(CorruptRecord):
        await store.get(k)


async def test_unreachable_server_raises_store_unavailable() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{closed_port()}/0", "x:", timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.get("k")
    finally:
        await store.close()


def test_unsupported_url_scheme_is_bad_input() -> None:
    with pytest.raises(BadInput, match=r"redis\.url"):
        RedisStore.from_url("memcached://127.0.0.1:11211", "x:", timeout=1)


def test_redacted_url_hides_the_password_only() -> None:
    assert redact_url("redis://user:hunter2@h:6379/0") == "redis://user:<redacted>@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
