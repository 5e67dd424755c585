"""Push invalidation across replicas on a real Valkey: a revocation anywhere empties every replica's cache at
once, and a lost channel turns the cache off (flushed) until it is back."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from sidecar.core.session import new_session
from sidecar.core.tokens import SessionKey, token_key, user_tag
from sidecar.keyring import KeyRingSource
from sidecar.sources.cached import CachedSource, LocalEvictions
from sidecar.sources.native import NativeSource
from sidecar.store.cache import SessionCache
from sidecar.store.invalidation import InvalidationListener
from sidecar.store.redis import RedisStore
from sidecar.store.stale import StaleSessions
from tests.support import servers
from tests.support.edge import RING

pytestmark = pytest.mark.integration


@dataclass
class Replica:
    store: RedisStore
    source: CachedSource
    listener: InvalidationListener

    @property
    def cache(self) -> SessionCache:
        assert self.source.cache is not None
        return self.source.cache

    @property
    def writes(self) -> LocalEvictions:
        """The store as this replica's SessionService writes to it."""
        return LocalEvictions(self.store, self.source.invalidate)


def cached_source(store: RedisStore, stale: StaleSessions | None = None, ttl: float = 30) -> CachedSource:
    native = NativeSource(store, KeyRingSource(store, RING), "SESSION")
    return CachedSource(native, cache=SessionCache(ttl=ttl, max_entries=1000, max_bytes=10**6), stale=stale)


async def replica(url: str, prefix: str) -> Replica:
    store = RedisStore.from_url(url, prefix, timeout=1.0)
    source = cached_source(store)
    listener = InvalidationListener(store.client, store.invalidation_channel, source, ping_interval=0.2,
                                    liveness_timeout=0.6, retry_interval=0.1)  # fmt: skip
    listener.start()
    await asyncio.wait_for(listener.connected.wait(), 5)
    return Replica(store, source, listener)


@pytest.fixture
async def pair(valkey_url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    prefix = f"inv-{secrets.token_hex(4)}:"
    a, b = await replica(valkey_url, prefix), await replica(valkey_url, prefix)
    yield a, b
    for r in (a, b):
        await r.listener.stop()
        await r.store.close()


def session_for(user: str) -> tuple[SessionKey, object]:
    record = new_session(session_id=secrets.token_urlsafe(6), user_id=user, email=None, roles=(), attributes={},
                         idle_timeout=600, absolute_timeout=3600, now=time.time())  # fmt: skip
    return SessionKey(user_tag(user), token_key(secrets.token_urlsafe(32))), record


async def until_gone(r: Replica, key: SessionKey, limit: float = 1.0) -> float:
    """Seconds until the replica's cached read of ``key`` says no session (fails past ``limit``)."""
    started = time.perf_counter()
    while await r.source.lookup(key, time.time()) is not None:
        assert time.perf_counter() - started < limit, "revocation not seen by the other replica"
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


@pytest.mark.parametrize("how", ["revoke", "revoke_user", "rotate", "revoke_session"])
async def test_a_revocation_on_one_replica_is_seen_by_the_other_at_once(
    pair: tuple[Replica, Replica], how: str
) -> None:
    a, b = pair
    user = f"u-{secrets.token_hex(3)}"
    key, record = session_for(user)
    await a.store.create(key, record)  # type: ignore[arg-type]
    assert await b.source.lookup(key, time.time()) is not None
    hits = b.cache.hits
    assert await b.source.lookup(key, time.time()) is not None
    assert b.cache.hits == hits + 1  # served from b's cache, not the store
    if how == "revoke":
        await a.writes.revoke(key)
    elif how == "revoke_user":
        await a.writes.revoke_user(user)
    elif how == "rotate":
        new_key, _ = session_for(user)
        assert await a.writes.rotate(key, new_key, record, time.time())  # type: ignore[arg-type]
    else:
        await a.writes.revoke_session(user, record.session_id)  # type: ignore[attr-defined]
    seconds = await until_gone(b, key)
    assert seconds < 0.1


async def test_a_lost_channel_flushes_the_cache_and_it_comes_back(tmp_path: Path) -> None:
    server = servers.start_valkey_server(tmp_path / "v")
    try:
        r = await replica(server.url, "lost:")
        key, record = session_for("carol")
        await r.store.create(key, record)  # type: ignore[arg-type]
        await r.source.lookup(key, time.time())
        assert r.cache.stats().entries == 1
        subscriptions = r.listener.subscriptions
        admin = aioredis.from_url(server.url)
        await admin.client_kill_filter(_type="pubsub")  # the subscription connection is cut
        deadline = time.monotonic() + 3
        while r.listener.subscriptions == subscriptions:  # it reconnects by itself...
            assert time.monotonic() < deadline, "the channel never came back"
            await asyncio.sleep(0.01)
        assert r.cache.live and r.cache.stats().entries == 0  # ...and trusts nothing cached before the cut
        await admin.aclose()
        await r.listener.stop()
        await r.store.close()
    finally:
        server.stop()


async def test_a_silent_channel_turns_the_cache_off(tmp_path: Path) -> None:
    server = servers.start_valkey_server(tmp_path / "v")
    try:
        r = await replica(server.url, "silent:")
        assert server.server.proc is not None
        os.kill(server.server.proc.pid, signal.SIGSTOP)  # no reset, no answers: a partition
        try:
            deadline = time.monotonic() + 3
            while r.cache.live:
                assert time.monotonic() < deadline, "cache still live while its channel is silent"
                await asyncio.sleep(0.02)
        finally:
            os.kill(server.server.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(r.listener.connected.wait(), 5)
        await r.listener.stop()
        await r.store.close()
    finally:
        server.stop()


async def test_last_known_identities_survive_a_store_outage_but_not_a_channel_lost_while_the_store_answers(
    tmp_path: Path,
) -> None:
    server = servers.start_valkey_server(tmp_path / "v")
    try:
        store = RedisStore.from_url(server.url, "stale:", timeout=0.3)
        stale = StaleSessions(max_age=30, max_entries=100)
        source = cached_source(store, stale)
        listener = InvalidationListener(store.client, store.invalidation_channel, source, ping_interval=0.2,
                                        liveness_timeout=0.6, retry_interval=0.1)  # fmt: skip
        listener.start()
        await asyncio.wait_for(listener.connected.wait(), 5)
        key, record = session_for("dora")
        await store.create(key, record)  # type: ignore[arg-type]
        stale.remember(key, record, time.time())  # type: ignore[arg-type]
        # The channel is cut while the store still answers: a revocation could be missed, so forget.
        admin = aioredis.from_url(server.url)
        await admin.client_kill_filter(_type="pubsub")
        await admin.aclose()
        deadline = time.monotonic() + 3
        while len(stale):
            assert time.monotonic() < deadline, "last known identities kept after a channel loss with the store up"
            await asyncio.sleep(0.02)
        await asyncio.wait_for(listener.connected.wait(), 5)
        stale.remember(key, record, time.time())  # type: ignore[arg-type]
        # The store itself goes: nobody can revoke, the identity stays usable.
        server.stop()
        deadline = time.monotonic() + 3
        while source.live:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # the store check after the loss has run by now
        assert source.fallback(key, time.time()) == record
        await listener.stop()
        await store.close()
    finally:
        server.stop()
