"""One contract for every SessionStore: the in-memory store, a real Valkey and a real Redis 7.

Each Redis-backed run uses its own key prefix, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest

from sidecar.core.session import SessionRecord, new_session
from sidecar.store.base import SessionStore
from sidecar.store.memory import MemoryStore
from sidecar.store.redis import RedisStore

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


@pytest.fixture(params=["memory", "valkey", "redis7"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[StoreUnderTest]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance_fake(seconds: float) -> None:
            clock.value += seconds

        yield StoreUnderTest(MemoryStore(clock=clock), advance_fake, clock)
        return
    url = request.getfixturevalue("valkey_url" if request.param == "valkey" else "redis7_url")
    store = RedisStore.from_url(url, f"contract-{secrets.token_hex(4)}:", timeout=2.0)
    try:
        yield StoreUnderTest(store, asyncio.sleep, time.time)
    finally:
        await store.close()


def record(subject: StoreUnderTest, user: str = "alice", **changes: object) -> SessionRecord:
    base = new_session(
        session_id=secrets.token_urlsafe(8),
        user_id=user,
        email=f"{user}@example.com",
        roles=("dev",),
        attributes={"team": "blue"},
        idle_timeout=60,
        absolute_timeout=3600,
        now=subject.now(),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def key() -> str:
    return secrets.token_hex(32)


async def test_get_of_an_unknown_key_is_none(subject: StoreUnderTest) -> None:
    assert await subject.store.get(key()) is None


async def test_created_record_reads_back_equal(subject: StoreUnderTest) -> None:
    k, rec = key(), record(subject)
    await subject.store.create(k, rec, 60_000)
    assert await subject.store.get(k) == rec


async def test_record_with_unicode_identity_reads_back_equal(subject: StoreUnderTest) -> None:
    k, rec = key(), record(subject, user="jürgen", email="jürgen@exämple.com")
    await subject.store.create(k, rec, 60_000)
    assert await subject.store.get(k) == rec


async def test_record_is_gone_after_its_ttl(subject: StoreUnderTest) -> None:
    k = key()
    await subject.store.create(k, record(subject), 100)
    await subject.advance(0.3)
    assert await subject.store.get(k) is None


async def test_touch_replaces_an_existing_record(subject: StoreUnderTest) -> None:
    k, rec = key(), record(subject)
    await subject.store.create(k, rec, 60_000)
    newer = replace(rec, last_seen_at=rec.last_seen_at + 5)
    assert await subject.store.touch(k, newer, 60_000) is True
    assert await subject.store.get(k) == newer


async def test_touch_extends_the_ttl(subject: StoreUnderTest) -> None:
    k, rec = key(), record(subject)
    await subject.store.create(k, rec, 300)
    assert await subject.store.touch(k, rec, 60_000) is True
    await subject.advance(0.5)
    assert await subject.store.get(k) == rec


async def test_touch_of_a_missing_record_writes_nothing(subject: StoreUnderTest) -> None:
    k = key()
    assert await subject.store.touch(k, record(subject), 60_000) is False
    assert await subject.store.get(k) is None


async def test_touch_after_revoke_does_not_resurrect_the_session(subject: StoreUnderTest) -> None:
    k, rec = key(), record(subject)
    await subject.store.create(k, rec, 60_000)
    assert await subject.store.revoke(k) is True
    assert await subject.store.touch(k, rec, 60_000) is False
    assert await subject.store.get(k) is None


async def test_revoke_reports_whether_a_session_existed(subject: StoreUnderTest) -> None:
    k = key()
    await subject.store.create(k, record(subject), 60_000)
    assert await subject.store.revoke(k) is True
    assert await subject.store.revoke(k) is False
    assert await subject.store.revoke(key()) is False


async def test_revoked_session_leaves_the_user_listing(subject: StoreUnderTest) -> None:
    user = f"u-{secrets.token_hex(4)}"
    kept, gone = record(subject, user), record(subject, user)
    k_kept, k_gone = key(), key()
    await subject.store.create(k_kept, kept, 60_000)
    await subject.store.create(k_gone, gone, 60_000)
    await subject.store.revoke(k_gone)
    assert await subject.store.list_user(user) == [kept]


async def test_list_user_returns_every_live_session_of_that_user_only(subject: StoreUnderTest) -> None:
    user, other = f"u-{secrets.token_hex(4)}", f"o-{secrets.token_hex(4)}"
    mine = [record(subject, user) for _ in range(3)]
    for rec in mine:
        await subject.store.create(key(), rec, 60_000)
    await subject.store.create(key(), record(subject, other), 60_000)
    listed = await subject.store.list_user(user)
    assert sorted(r.session_id for r in listed) == sorted(r.session_id for r in mine)


async def test_list_user_drops_expired_sessions(subject: StoreUnderTest) -> None:
    user = f"u-{secrets.token_hex(4)}"
    short, long = record(subject, user), record(subject, user)
    await subject.store.create(key(), short, 100)
    await subject.store.create(key(), long, 60_000)
    await subject.advance(0.3)
    assert await subject.store.list_user(user) == [long]


async def test_list_of_an_unknown_user_is_empty(subject: StoreUnderTest) -> None:
    assert await subject.store.list_user(f"nobody-{secrets.token_hex(4)}") == []


async def test_revoke_user_deletes_every_session_of_that_user_and_counts_them(
    subject: StoreUnderTest,
) -> None:
    user, other = f"u-{secrets.token_hex(4)}", f"o-{secrets.token_hex(4)}"
    keys = [key() for _ in range(3)]
    for k in keys:
        await subject.store.create(k, record(subject, user), 60_000)
    other_key = key()
    await subject.store.create(other_key, record(subject, other), 60_000)
    assert await subject.store.revoke_user(user) == 3
    for k in keys:
        assert await subject.store.get(k) is None
    assert await subject.store.get(other_key) is not None
    assert await subject.store.list_user(user) == []
    assert await subject.store.revoke_user(user) == 0


async def test_revoke_user_does_not_count_already_expired_sessions(subject: StoreUnderTest) -> None:
    user = f"u-{secrets.token_hex(4)}"
    await subject.store.create(key(), record(subject, user), 100)
    await subject.store.create(key(), record(subject, user), 60_000)
    await subject.advance(0.3)
    assert await subject.store.revoke_user(user) == 1


async def test_shared_secret_keeps_the_first_proposal(subject: StoreUnderTest) -> None:
    first = await subject.store.shared_secret("first-proposal")
    second = await subject.store.shared_secret("second-proposal")
    assert first == "first-proposal"
    assert second == "first-proposal"


async def test_ping_succeeds_on_a_reachable_store(subject: StoreUnderTest) -> None:
    await subject.store.ping()
