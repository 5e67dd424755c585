"""CachedSource: a source behind this process's memory (cache, refused-records memo, last known identities), all
kept honest by the invalidation channel; and LocalEvictions, the SessionService's write side."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from sidecar.core.reasons import Reason
from sidecar.core.session import SessionRecord, new_session
from sidecar.core.tokens import ENTROPY_BYTES, KeyRing, SessionKey, mint_token, session_key, user_tag
from sidecar.errors import CorruptRecord
from sidecar.keyring import KeyRingSource
from sidecar.sources.cached import REFUSED_FOR_SECONDS, CachedSource, LocalEvictions, RefusedRecords
from sidecar.sources.native import NativeSource
from sidecar.store.cache import SessionCache
from sidecar.store.invalidation import Invalidated, KeepsLastKnown
from sidecar.store.memory import MemoryStore
from sidecar.store.stale import StaleSessions

NOW = 1_800_000_000.0
RING = KeyRing.of([("k1", b"\x01" * 32)])


def key(n: int, user: str = "alice") -> SessionKey:
    return SessionKey(user_tag(user), f"{n:064x}")


# --- refused records: remembered briefly, bounded ---------------------------------------------------------------


def test_a_refused_key_is_remembered_with_its_reason_for_a_few_seconds() -> None:
    refused = RefusedRecords()
    refused.refuse(key(1), Reason.RECORD_TOO_LARGE, NOW)
    assert refused.reason(key(1), NOW + REFUSED_FOR_SECONDS - 0.01) is Reason.RECORD_TOO_LARGE
    assert refused.reason(key(1), NOW + REFUSED_FOR_SECONDS) is None
    assert refused.reason(key(2), NOW) is None
    assert refused.reason(key(1, "bob"), NOW) is None  # same digest, another tag: another key


def test_refused_keys_are_bounded_least_recently_refused_first() -> None:
    refused = RefusedRecords(max_entries=3)
    for n in range(10):
        refused.refuse(key(n), Reason.RECORD_CORRUPT, NOW)
    assert len(refused) == 3
    assert [n for n in range(10) if refused.reason(key(n), NOW)] == [7, 8, 9]


# --- the source behind the memory -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Counting(MemoryStore):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.reads = 0
        self.planted: dict[SessionKey, CorruptRecord] = {}
        self.gate: asyncio.Event | None = None

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        if key in self.planted:
            raise self.planted[key]
        return await super().resolve(key, now)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> Counting:
    return Counting(clock)


def rec(idle: float = 600) -> SessionRecord:
    return new_session(session_id="sid", user_id="alice", email=None, roles=(), attributes={}, idle_timeout=idle,
                       absolute_timeout=3600, now=NOW)  # fmt: skip


def cached(store: Counting, clock: Clock, *, live: bool = True, stale: bool = False) -> CachedSource:
    remembered = StaleSessions(max_age=30, max_entries=10) if stale else None
    source = CachedSource(
        NativeSource(store, KeyRingSource(store, RING), "SESSION"),
        cache=SessionCache(ttl=10, max_entries=100, max_bytes=10**6),
        stale=remembered,
        clock=clock,
    )
    source.set_live(live)
    return source


async def stored(store: Counting, idle: float = 600) -> SessionKey:
    k = session_key(mint_token(RING, secrets.token_bytes(ENTROPY_BYTES), "abc123"))
    await store.create(k, rec(idle))
    return k


def test_it_is_the_invalidation_channels_target_with_last_known_identities(store: Counting, clock: Clock) -> None:
    source: Invalidated = cached(store, clock)
    assert isinstance(source, KeepsLastKnown)


async def test_repeat_lookups_are_answered_without_the_store(store: Counting, clock: Clock) -> None:
    source, k = cached(store, clock), await stored(store)
    assert source.lookup_now(k, NOW) is None  # nothing cached yet: only a read can tell
    for _ in range(20):
        assert await source.lookup(k, clock.now) == rec()
    assert store.reads == 1 and source.lookup_now(k, NOW) == rec()


async def test_a_glance_then_a_read_counts_one_miss(store: Counting, clock: Clock) -> None:
    source, k = cached(store, clock), await stored(store)
    assert source.lookup_now(k, NOW) is None
    assert await source.lookup(k, NOW) is not None
    assert source.cache is not None and (source.cache.hits, source.cache.misses) == (0, 1)


async def test_the_idle_timer_keeps_moving_in_the_store(store: Counting, clock: Clock) -> None:
    source, k = cached(store, clock), await stored(store, idle=20)  # touch interval 2s
    for _ in range(30):  # 30 s of steady use, far past the 20 s idle timeout
        clock.now += 1
        assert await source.lookup(k, clock.now) is not None
    assert 10 <= store.reads <= 20  # about one store read per touch interval


async def test_a_read_that_raced_an_invalidation_is_not_cached(store: Counting, clock: Clock) -> None:
    source, k = cached(store, clock), await stored(store)
    store.gate = asyncio.Event()
    reading = asyncio.create_task(source.lookup(k, NOW))
    await asyncio.sleep(0)
    source.invalidate([k.digest])  # revoked while the read was on its way
    store.gate.set()
    assert await reading is not None
    assert source.lookup_now(k, NOW) is None


async def test_a_refusal_is_remembered_and_served_whatever_the_channels_state(store: Counting, clock: Clock) -> None:
    source = cached(store, clock, live=False)
    k = await stored(store)
    store.planted[k] = CorruptRecord("not JSON")
    assert await source.lookup(k, NOW) is Reason.RECORD_CORRUPT
    assert source.lookup_now(k, NOW + 1) is Reason.RECORD_CORRUPT
    assert await source.lookup(k, NOW + 1) is Reason.RECORD_CORRUPT and store.reads == 1
    source.invalidate([k.digest])  # a revocation, seen even while the cache serves nothing
    assert source.lookup_now(k, NOW + 1) is None


async def test_last_known_identities_are_remembered_while_the_channel_is_live_and_recalled_on_failure(
    store: Counting, clock: Clock
) -> None:
    source, k = cached(store, clock, stale=True), await stored(store)
    assert source.fallback(k, NOW) is None
    await source.lookup(k, NOW)
    source.set_live(False)  # lost with the store: nobody can revoke meanwhile
    assert source.holds_last_known() and source.fallback(k, NOW + 29) == rec()
    assert source.fallback(k, NOW + 31) is None  # past redis.stale_for after its last confirmation


async def test_nothing_is_remembered_while_the_channel_is_down(store: Counting, clock: Clock) -> None:
    source, k = cached(store, clock, live=False, stale=True), await stored(store)
    await source.lookup(k, NOW)
    assert not source.holds_last_known() and source.fallback(k, NOW) is None


@pytest.mark.parametrize("event", ["invalidate", "resubscribed", "forget_last_known"])
async def test_revocations_and_unseen_ones_forget_last_known_identities(
    store: Counting, clock: Clock, event: str
) -> None:
    source, k = cached(store, clock, stale=True), await stored(store)
    await source.lookup(k, NOW)
    source.set_live(False)
    if event == "invalidate":
        source.invalidate([k.digest])
    else:
        getattr(source, event)()
    assert source.fallback(k, NOW) is None and not source.holds_last_known()


async def test_without_a_cache_only_the_refusals_are_remembered(store: Counting, clock: Clock) -> None:
    source = CachedSource(NativeSource(store, KeyRingSource(store, RING), "SESSION"), clock=clock)
    k = await stored(store)
    source.set_live(True)  # no cache: nothing to turn on
    assert not source.live
    await source.lookup(k, NOW)
    assert await source.lookup(k, NOW) is not None and store.reads == 2


async def test_local_evictions_drop_a_revoked_or_rotated_key_at_once(store: Counting, clock: Clock) -> None:
    source = cached(store, clock)
    writes = LocalEvictions(store, source.invalidate)
    first, second = await stored(store), await stored(store)
    for k in (first, second):
        await source.lookup(k, NOW)
    assert await writes.revoke(first)
    assert source.lookup_now(first, NOW) is None
    moved = session_key(mint_token(RING, secrets.token_bytes(ENTROPY_BYTES), "abc123"))
    assert await writes.rotate(second, moved, rec(), NOW)
    assert source.lookup_now(second, NOW) is None
