"""SessionCache and CachingStore: bounds, expiry, touch timing, invalidation, the epoch guard, and what counts as a
lookup."""

from __future__ import annotations

import pytest

from sidecar.core.session import SessionRecord, new_session
from sidecar.core.tokens import SessionKey, user_tag
from sidecar.store.cache import CachingStore, SessionCache, record_size
from sidecar.store.memory import MemoryStore

NOW = 1_800_000_000.0


def rec(user: str = "alice", idle: float = 600, absolute: float = 3600, now: float = NOW) -> SessionRecord:
    return new_session(
        session_id="sid-" + user, user_id=user, email=None, roles=("dev",), attributes={},
        idle_timeout=idle, absolute_timeout=absolute, now=now,
    )  # fmt: skip


def key(n: int, user: str = "alice") -> SessionKey:
    return SessionKey(user_tag(user), f"{n:064x}")


def live_cache(**bounds: int) -> SessionCache:
    cache = SessionCache(ttl=10, max_entries=bounds.get("max_entries", 100), max_bytes=bounds.get("max_bytes", 10**6))
    cache.set_live(True)
    return cache


def test_a_cached_record_is_a_hit_until_the_ttl() -> None:
    cache = live_cache()
    cache.put(key(1), rec(), NOW, cache.epoch)
    assert cache.get(key(1), NOW + 9.9) is not None
    assert cache.get(key(1), NOW + 10) is None


def test_a_hit_never_outlives_the_sessions_own_expiry() -> None:
    cache = live_cache()
    cache.put(key(1), rec(idle=2, absolute=3), NOW, cache.epoch)
    assert cache.get(key(1), NOW + 0.1) is not None
    assert cache.get(key(1), NOW + 0.2) is None  # touch due (a tenth of the idle timeout): back to the store


def test_a_hit_stops_when_the_idle_timer_needs_a_refresh_in_the_store() -> None:
    cache = live_cache()
    cache.put(key(1), rec(idle=50), NOW, cache.epoch)  # touch interval 5s, below the ttl
    assert cache.get(key(1), NOW + 4.9) is not None
    assert cache.get(key(1), NOW + 5.0) is None


def test_nothing_is_served_while_the_invalidation_channel_is_down() -> None:
    cache = SessionCache(ttl=10, max_entries=10, max_bytes=10**6)
    cache.put(key(1), rec(), NOW, cache.epoch)
    assert cache.get(key(1), NOW) is None
    cache.set_live(True)
    cache.put(key(1), rec(), NOW, cache.epoch)
    assert cache.get(key(1), NOW) is not None
    cache.set_live(False)
    assert cache.get(key(1), NOW) is None
    cache.set_live(True)
    assert cache.get(key(1), NOW) is None  # flushed: nothing from before the outage is trusted


def test_invalidation_evicts_the_entry() -> None:
    cache = live_cache()
    cache.put(key(1), rec(), NOW, cache.epoch)
    cache.put(key(2), rec(), NOW, cache.epoch)
    cache.invalidate([key(1).digest])
    assert cache.get(key(1), NOW) is None
    assert cache.get(key(2), NOW) is not None


def test_a_read_that_raced_an_invalidation_is_not_cached() -> None:
    cache = live_cache()
    epoch = cache.epoch  # a miss starts reading the store...
    cache.invalidate([key(1).digest])  # ...a revocation arrives meanwhile...
    cache.put(key(1), rec(), NOW, epoch)  # ...and the (possibly stale) answer must not be cached
    assert cache.get(key(1), NOW) is None


def test_entry_count_is_bounded_least_recently_used_first() -> None:
    cache = live_cache(max_entries=2)
    for n in (1, 2):
        cache.put(key(n), rec(), NOW, cache.epoch)
    assert cache.get(key(1), NOW) is not None  # 1 is now the most recently used
    cache.put(key(3), rec(), NOW, cache.epoch)
    assert cache.get(key(2), NOW) is None
    assert cache.get(key(1), NOW) is not None and cache.get(key(3), NOW) is not None


def test_bytes_are_bounded() -> None:
    size = record_size(rec())
    cache = live_cache(max_bytes=size * 3)
    for n in range(10):
        cache.put(key(n), rec(), NOW, cache.epoch)
    stats = cache.stats()
    assert stats.entries == 3 and stats.bytes <= size * 3


def test_a_glance_counts_a_hit_but_leaves_the_miss_to_the_read_that_follows() -> None:
    cache = live_cache()
    assert cache.get(key(1), NOW, count_miss=False) is None
    assert (cache.hits, cache.misses) == (0, 0)
    assert cache.get(key(1), NOW) is None
    cache.put(key(1), rec(), NOW, cache.epoch)
    assert cache.get(key(1), NOW, count_miss=False) is not None
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_key_with_the_same_digest_but_another_tag_is_a_miss() -> None:
    cache = live_cache()
    cache.put(key(1, "alice"), rec(), NOW, cache.epoch)
    assert cache.get(key(1, "bob"), NOW) is None


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class CountingMemory(MemoryStore):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.resolves = 0

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        self.resolves += 1
        return await super().resolve(key, now)


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_caching_store_answers_repeat_reads_without_the_store(clock: Clock) -> None:
    inner = CountingMemory(clock)
    store = CachingStore(inner, live_cache(), clock)
    await store.create(key(1), rec())
    for _ in range(20):
        assert await store.resolve(key(1), clock.now) is not None
    assert inner.resolves == 1


async def test_caching_store_revoke_evicts_locally_at_once(clock: Clock) -> None:
    inner = CountingMemory(clock)
    store = CachingStore(inner, live_cache(), clock)
    await store.create(key(1), rec())
    await store.resolve(key(1), clock.now)
    await store.revoke(key(1))
    assert await store.resolve(key(1), clock.now) is None


async def test_caching_store_keeps_the_idle_timer_moving_in_the_store(clock: Clock) -> None:
    inner = CountingMemory(clock)
    store = CachingStore(inner, live_cache(), clock)
    await store.create(key(1), rec(idle=20))  # touch interval 2s
    for _ in range(30):  # 30 s of steady use, far past the 20 s idle timeout
        clock.now += 1
        assert await store.resolve(key(1), clock.now) is not None
    assert 10 <= inner.resolves <= 20  # about one store read per touch interval
