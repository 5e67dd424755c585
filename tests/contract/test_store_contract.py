"""One contract for every SessionStore: the in-memory store, a real Valkey, a real Redis 7, and Valkey behind
Sentinel (1 primary, 2 replicas, 3 sentinels) and as a Cluster (3 primaries, 3 replicas), and the per-process cache
(with its invalidation channel) in front of Valkey.

Redis-backed runs seal values (AES-256-GCM) and use their own key prefix, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest

from sidecar.core.sealing import Sealer
from sidecar.core.session import SessionRecord, new_session
from sidecar.core.tokens import SessionKey, token_key, user_tag
from sidecar.errors import StoreUnavailable
from sidecar.store.base import SessionStore
from sidecar.store.cache import CachingStore, SessionCache
from sidecar.store.invalidation import InvalidationListener
from sidecar.store.memory import MemoryStore
from sidecar.store.redis import SCAN_BATCH, RedisStore

pytestmark = pytest.mark.integration


@dataclass
class StoreUnderTest:
    store: SessionStore
    advance: Callable[[float], Awaitable[None]]  # let time pass (a fake clock, or a real sleep for Redis)
    now: Callable[[], float]


class FakeClock:
    def __init__(self) -> None:
        self.value = 1_700_000_000.0

    def __call__(self) -> float:
        return self.value


@pytest.fixture(params=["memory", "valkey", "redis7", "sentinel", "cluster", "cached-valkey", "cached-cluster"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[StoreUnderTest]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance_fake(seconds: float) -> None:
            clock.value += seconds

        yield StoreUnderTest(MemoryStore(clock=clock), advance_fake, clock)
        return
    server = request.param.removeprefix("cached-")
    if server in ("sentinel", "cluster"):
        url = request.getfixturevalue(f"{server}_topology").url
    else:
        url = request.getfixturevalue(f"{server}_url")
    sealer = Sealer((("e1", b"k" * 32),))
    store = RedisStore.from_url(url, f"contract-{secrets.token_hex(4)}:", timeout=2.0, sealer=sealer)
    if not request.param.startswith("cached-"):
        try:
            yield StoreUnderTest(store, asyncio.sleep, time.time)
        finally:
            await store.close()
        return
    cache = SessionCache(ttl=5.0, max_entries=1000, max_bytes=10**6)
    listener = InvalidationListener(store.client, store.invalidation_channel, cache)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        yield StoreUnderTest(CachingStore(store, cache), asyncio.sleep, time.time)
    finally:
        await listener.stop()
        await store.close()


def record(subject: StoreUnderTest, user: str = "alice", idle: float = 60, absolute: float = 3600) -> SessionRecord:
    return new_session(
        session_id=secrets.token_urlsafe(8),
        user_id=user,
        email=f"{user}@example.com",
        roles=("dev",),
        attributes={"team": "blue"},
        idle_timeout=idle,
        absolute_timeout=absolute,
        now=subject.now(),
    )


def key_for(user: str = "alice") -> SessionKey:
    return SessionKey(tag=user_tag(user), digest=token_key(secrets.token_urlsafe(32)))


def a_user() -> str:
    return f"u-{secrets.token_hex(4)}"


async def test_get_of_an_unknown_key_is_none(subject: StoreUnderTest) -> None:
    assert await subject.store.get(key_for()) is None
    assert await subject.store.resolve(key_for(), subject.now()) is None


async def test_created_record_reads_back_equal(subject: StoreUnderTest) -> None:
    k, rec = key_for(), record(subject)
    assert await subject.store.create(k, rec) == 0
    assert await subject.store.get(k) == rec
    assert await subject.store.resolve(k, subject.now()) == rec


async def test_record_with_unicode_identity_reads_back_equal(subject: StoreUnderTest) -> None:
    rec = replace(record(subject, "jürgen"), email="jürgen@exämple.com", attributes={"city": "Zürich"})
    k = key_for("jürgen")
    await subject.store.create(k, rec)
    assert await subject.store.get(k) == rec


async def test_record_is_gone_after_its_idle_timeout(subject: StoreUnderTest) -> None:
    k = key_for()
    await subject.store.create(k, record(subject, idle=0.2))
    await subject.advance(0.5)
    assert await subject.store.get(k) is None


async def test_resolve_refreshes_last_seen_so_an_active_session_outlives_its_idle_window(
    subject: StoreUnderTest,
) -> None:
    k = key_for()
    await subject.store.create(k, record(subject, idle=1.0))
    for _ in range(4):
        await subject.advance(0.4)
        assert await subject.store.resolve(k, subject.now()) is not None
    seen = await subject.store.get(k)
    assert seen is not None and seen.last_seen_at >= subject.now() - 0.5


async def test_resolve_within_the_touch_interval_writes_nothing(subject: StoreUnderTest) -> None:
    k, rec = key_for(), record(subject, idle=600)  # touch interval: 60s
    await subject.store.create(k, rec)
    await subject.advance(0.1)
    await subject.store.resolve(k, subject.now())
    assert await subject.store.get(k) == rec


async def test_absolute_timeout_wins_over_touches(subject: StoreUnderTest) -> None:
    k = key_for()
    await subject.store.create(k, record(subject, idle=0.5, absolute=1.0))
    for _ in range(4):
        await subject.advance(0.2)
        await subject.store.resolve(k, subject.now())
    await subject.advance(0.5)
    assert await subject.store.get(k) is None


async def test_resolve_after_revoke_does_not_resurrect_the_session(subject: StoreUnderTest) -> None:
    k = key_for()
    await subject.store.create(k, record(subject, idle=1.0))
    assert await subject.store.revoke(k) is True
    await subject.advance(0.3)
    assert await subject.store.resolve(k, subject.now()) is None
    assert await subject.store.get(k) is None


async def test_revoke_reports_whether_a_session_existed(subject: StoreUnderTest) -> None:
    k = key_for()
    await subject.store.create(k, record(subject))
    assert await subject.store.revoke(k) is True
    assert await subject.store.revoke(k) is False
    assert await subject.store.revoke(key_for()) is False


async def test_revoked_session_leaves_the_user_listing(subject: StoreUnderTest) -> None:
    user = a_user()
    kept, gone = record(subject, user), record(subject, user)
    k_kept, k_gone = key_for(user), key_for(user)
    await subject.store.create(k_kept, kept)
    await subject.store.create(k_gone, gone)
    await subject.store.revoke(k_gone)
    assert await subject.store.list_user(user) == [kept]


async def test_list_user_returns_that_users_sessions_oldest_first(subject: StoreUnderTest) -> None:
    user, other = a_user(), a_user()
    mine = []
    for _ in range(3):
        rec = record(subject, user)
        mine.append(rec)
        await subject.store.create(key_for(user), rec)
        await subject.advance(0.01)
    await subject.store.create(key_for(other), record(subject, other))
    listed = await subject.store.list_user(user)
    assert [r.session_id for r in listed] == [r.session_id for r in mine]


async def test_list_user_drops_expired_sessions(subject: StoreUnderTest) -> None:
    user = a_user()
    short, long = record(subject, user, idle=0.2), record(subject, user)
    await subject.store.create(key_for(user), short)
    await subject.store.create(key_for(user), long)
    await subject.advance(0.5)
    assert await subject.store.list_user(user) == [long]


async def test_list_of_an_unknown_user_is_empty(subject: StoreUnderTest) -> None:
    assert await subject.store.list_user(a_user()) == []


async def test_revoke_user_deletes_every_session_of_that_user_only(subject: StoreUnderTest) -> None:
    user, other = a_user(), a_user()
    keys = [key_for(user) for _ in range(3)]
    for k in keys:
        await subject.store.create(k, record(subject, user))
    other_key = key_for(other)
    await subject.store.create(other_key, record(subject, other))
    assert await subject.store.revoke_user(user) == 3
    for k in keys:
        assert await subject.store.get(k) is None
    assert await subject.store.get(other_key) is not None
    assert await subject.store.list_user(user) == []
    assert await subject.store.revoke_user(user) == 0


async def test_revoke_user_does_not_count_already_expired_sessions(subject: StoreUnderTest) -> None:
    user = a_user()
    await subject.store.create(key_for(user), record(subject, user, idle=0.2))
    await subject.store.create(key_for(user), record(subject, user))
    await subject.advance(0.5)
    assert await subject.store.revoke_user(user) == 1


async def test_revoke_session_by_its_handle(subject: StoreUnderTest) -> None:
    user = a_user()
    target, kept = record(subject, user), record(subject, user)
    k_target, k_kept = key_for(user), key_for(user)
    await subject.store.create(k_target, target)
    await subject.store.create(k_kept, kept)
    assert await subject.store.revoke_session(user, target.session_id) is True
    assert await subject.store.get(k_target) is None
    assert await subject.store.get(k_kept) == kept
    assert await subject.store.revoke_session(user, target.session_id) is False
    assert await subject.store.revoke_session(a_user(), kept.session_id) is False


async def test_cap_per_user_evicts_the_oldest(subject: StoreUnderTest) -> None:
    user = a_user()
    keys = []
    for _ in range(3):
        k = key_for(user)
        keys.append(k)
        evicted = await subject.store.create(k, record(subject, user), max_per_user=2)
        await subject.advance(0.01)
    assert evicted == 1
    assert await subject.store.get(keys[0]) is None
    assert await subject.store.get(keys[1]) is not None and await subject.store.get(keys[2]) is not None
    assert len(await subject.store.list_user(user)) == 2


async def test_rotate_moves_the_session_to_the_new_key_at_once(subject: StoreUnderTest) -> None:
    user = a_user()
    old, new = key_for(user), key_for(user)
    rec = record(subject, user)
    await subject.store.create(old, rec)
    changed = replace(rec, roles=("dev", "admin"))
    assert await subject.store.rotate(old, new, changed, subject.now()) is True
    assert await subject.store.get(old) is None
    moved = await subject.store.get(new)
    assert moved is not None
    assert (moved.session_id, moved.roles) == (rec.session_id, ("dev", "admin"))
    assert [r.session_id for r in await subject.store.list_user(user)] == [rec.session_id]
    assert await subject.store.revoke_user(user) == 1


async def test_rotate_of_a_gone_session_writes_nothing(subject: StoreUnderTest) -> None:
    user = a_user()
    old, new = key_for(user), key_for(user)
    assert await subject.store.rotate(old, new, record(subject, user), subject.now()) is False
    assert await subject.store.get(new) is None


async def test_shared_secret_keeps_the_first_proposal(subject: StoreUnderTest) -> None:
    first = await subject.store.shared_secret("first-proposal")
    second = await subject.store.shared_secret("second-proposal")
    assert first == "first-proposal"
    assert second == "first-proposal"


async def test_ping_succeeds_on_a_reachable_store(subject: StoreUnderTest) -> None:
    await subject.store.ping()


async def test_list_revoke_session_and_revoke_user_reach_past_one_scan_batch(subject: StoreUnderTest) -> None:
    user, count = a_user(), SCAN_BATCH + 30  # a Redis store needs two script calls for each
    created = []
    for _ in range(count):
        rec = record(subject, user)
        created.append(rec)
        await subject.store.create(key_for(user), rec)
    listed = await subject.store.list_user(user)
    assert sorted(r.session_id for r in listed) == sorted(r.session_id for r in created)
    # oldest first, to the millisecond the index orders by
    assert [round(r.created_at * 1000) for r in listed] == sorted(round(r.created_at * 1000) for r in created)
    newest = max(created, key=lambda r: r.created_at)
    assert await subject.store.revoke_session(user, newest.session_id) is True
    assert await subject.store.revoke_session(user, newest.session_id) is False  # scanned every batch, not found
    assert await subject.store.revoke_user(user) == count - 1
    assert await subject.store.list_user(user) == []


async def test_repeating_a_create_creates_nothing_more_and_succeeds(subject: StoreUnderTest) -> None:
    user = a_user()
    k, rec = key_for(user), record(subject, user)
    assert await subject.store.create(k, rec) == 0
    assert await subject.store.create(k, rec) == 0  # e.g. after a StoreTimeout whose attempt had run
    assert await subject.store.list_user(user) == [rec]
    with pytest.raises(StoreUnavailable, match="already exists"):
        await subject.store.create(k, record(subject, user))  # another session under the same key


async def test_repeating_a_rotation_that_took_effect_answers_true(subject: StoreUnderTest) -> None:
    user = a_user()
    old, new, rec = key_for(user), key_for(user), record(subject, user)
    await subject.store.create(old, rec)
    assert await subject.store.rotate(old, new, rec, subject.now()) is True
    assert await subject.store.rotate(old, new, rec, subject.now()) is True
    assert await subject.store.rotate(old, key_for(user), rec, subject.now()) is False  # not this rotation
    assert [r.session_id for r in await subject.store.list_user(user)] == [rec.session_id]
