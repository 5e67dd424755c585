"""Last known identities (failure_policy: stale): remembered only while trusted, bounded in age and count,
evicted by revocations, never past the session's own expiry."""

from __future__ import annotations

from sidecar.core.session import SessionRecord, new_session
from sidecar.core.tokens import SessionKey, user_tag
from sidecar.keyring import KeyRingSource
from sidecar.sources.cached import CachedSource
from sidecar.sources.native import NativeSource
from sidecar.store.cache import SessionCache
from sidecar.store.memory import MemoryStore
from sidecar.store.stale import StaleSessions
from tests.support.edge import RING

NOW = 1_800_000_000.0


def rec(idle: float = 600) -> SessionRecord:
    return new_session(session_id="s", user_id="alice", email=None, roles=(), attributes={},
                       idle_timeout=idle, absolute_timeout=3600, now=NOW)  # fmt: skip


def key(n: int) -> SessionKey:
    return SessionKey(user_tag("alice"), f"{n:064x}")


def trusted(**bounds: float) -> StaleSessions:
    stale = StaleSessions(max_age=bounds.get("max_age", 30), max_entries=int(bounds.get("max_entries", 10)))
    stale.trusted = True
    return stale


def test_nothing_is_remembered_while_the_channel_is_not_trusted() -> None:
    stale = StaleSessions(max_age=30, max_entries=10)
    stale.remember(key(1), rec(), NOW)
    assert stale.recall(key(1), NOW) is None


def test_a_remembered_identity_is_recalled_within_max_age_only() -> None:
    stale = trusted(max_age=30)
    stale.remember(key(1), rec(), NOW)
    assert stale.recall(key(1), NOW + 29) is not None
    assert stale.recall(key(1), NOW + 31) is None


def test_never_past_the_sessions_own_expiry() -> None:
    stale = trusted(max_age=300)
    stale.remember(key(1), rec(idle=10), NOW)
    assert stale.recall(key(1), NOW + 11) is None


def test_revocations_evict_through_the_cached_source_whatever_the_channel_state() -> None:
    stale, store = trusted(), MemoryStore()
    source = CachedSource(
        NativeSource(store, KeyRingSource(store, RING), "SESSION"),
        cache=SessionCache(ttl=10, max_entries=10, max_bytes=10**6),
        stale=stale,
    )
    source.set_live(True)
    stale.remember(key(1), rec(), NOW)
    source.set_live(False)  # the channel drops: entries stay (the store may be down), no new ones
    assert not stale.trusted and stale.recall(key(1), NOW) is not None
    source.invalidate([key(1).digest])
    assert stale.recall(key(1), NOW) is None


def test_count_is_bounded() -> None:
    stale = trusted(max_entries=2)
    for n in range(5):
        stale.remember(key(n), rec(), NOW)
    assert len(stale) == 2 and stale.recall(key(4), NOW) is not None and stale.recall(key(0), NOW) is None
