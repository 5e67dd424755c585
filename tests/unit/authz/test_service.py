"""AuthzService: the core's decision with the store in between, on the in-memory store."""

from __future__ import annotations

import asyncio
import random
import secrets
import sys
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.authz.observer import Observation
from sidecar.authz.service import AuthzService
from sidecar.core.decision import Allow, Decision, Deny
from sidecar.core.request import RequestView
from sidecar.core.session import RecordTooLarge, SessionRecord
from sidecar.core.tokens import KeyRing, SessionKey, mint_token, session_key
from sidecar.errors import CorruptRecord, StoreUnavailable
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.metrics import Metrics
from sidecar.sources import native
from sidecar.sources.cached import REFUSED_FOR_SECONDS, CachedSource
from sidecar.sources.native import NativeSource
from sidecar.store.cache import SessionCache
from sidecar.store.memory import MemoryStore
from sidecar.store.stale import StaleSessions
from tests.support.edge import RING, SETTINGS


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryStore):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.gets = 0
        self.delay = 0.0

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        self.gets += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().resolve(key, now)


class LaggingStore(CountingStore):
    """Returns records past their expiry, like a store whose TTL has not fired yet."""

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        return self._records.get(key)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> CountingStore:
    return CountingStore(clock)


@pytest.fixture
def manager(store: CountingStore, clock: Clock) -> SessionManager:
    return SessionManager(
        store,
        KeyRingSource(store, RING),
        cookie_name="SESSION",
        idle_timeout=60,
        absolute_timeout=3600,
        clock=clock,
    )


@pytest.fixture
def service(store: CountingStore, clock: Clock) -> AuthzService:
    return AuthzService(SETTINGS, store, KeyRingSource(store, RING), deadline=0.15, clock=clock)


def request(path: str = "/app", cookie: str | None = None, *extra: tuple[str, str]) -> RequestView:
    headers = [("host", "example.com")]
    if cookie is not None:
        headers.append(("cookie", cookie))
    headers.extend(extra)
    return RequestView(method="GET", scheme="https", host="example.com", path=path, headers=tuple(headers))


def header(decision: Allow, name: str) -> str | None:
    return dict(decision.headers_to_set).get(name)


async def test_live_session_is_allowed_with_its_identity(service: AuthzService, manager: SessionManager) -> None:
    issued = await manager.create("alice", email="a@example.com", roles=("dev",))
    decision = await service.check(request(cookie=f"SESSION={issued.token}"))
    assert isinstance(decision, Allow)
    assert header(decision, "x-user-id") == "alice"
    assert header(decision, "x-session-id") == issued.record.session_id


async def test_forged_token_is_denied_without_a_store_call(service: AuthzService, store: CountingStore) -> None:
    forged = mint_token(KeyRing.of([("k1", b"x" * 32)]), secrets.token_bytes(32), "abc123")
    decision = await service.check(request(cookie=f"SESSION={forged}"))
    assert isinstance(decision, Deny) and decision.status == 401
    assert store.gets == 0


async def test_unknown_token_is_denied(service: AuthzService) -> None:
    token = mint_token(RING, secrets.token_bytes(32), "abc123")
    decision = await service.check(request(cookie=f"SESSION={token}"))
    assert isinstance(decision, Deny) and decision.status == 401


async def test_idle_session_is_denied_even_if_the_store_still_has_it(clock: Clock) -> None:
    store = LaggingStore(clock)
    service = AuthzService(SETTINGS, store, KeyRingSource(store, RING), deadline=0.15, clock=clock)
    manager = SessionManager(
        store, KeyRingSource(store, RING), cookie_name="SESSION", idle_timeout=60, absolute_timeout=3600, clock=clock
    )
    issued = await manager.create("alice", idle_timeout=10)
    assert isinstance(await service.check(request(cookie=f"SESSION={issued.token}")), Allow)
    clock.now += 11
    decision = await service.check(request(cookie=f"SESSION={issued.token}"))
    assert isinstance(decision, Deny) and decision.status == 401


async def test_activity_refreshes_last_seen_so_the_session_outlives_its_idle_window(
    service: AuthzService, manager: SessionManager, clock: Clock
) -> None:
    issued = await manager.create("alice", idle_timeout=10)
    for _ in range(5):
        clock.now += 6
        decision = await service.check(request(cookie=f"SESSION={issued.token}"))
        assert isinstance(decision, Allow)


async def test_first_live_session_in_header_order_wins_and_at_most_three_are_tried(
    service: AuthzService, manager: SessionManager, store: CountingStore
) -> None:
    dead = [mint_token(RING, secrets.token_bytes(32), "abc123") for _ in range(3)]
    bob = await manager.create("bob")
    alice = await manager.create("alice")
    cookie = "; ".join(f"SESSION={t}" for t in [*dead, bob.token])
    decision = await service.check(request(cookie=cookie))
    assert isinstance(decision, Deny)
    assert store.gets == 3
    decision = await service.check(request(cookie=f"SESSION=junk; SESSION={alice.token}; SESSION={bob.token}"))
    assert isinstance(decision, Allow) and decision.user_id == "alice"


async def test_store_down_denies_with_503_but_public_routes_stay_up(
    service: AuthzService, manager: SessionManager, store: CountingStore
) -> None:
    issued = await manager.create("alice")
    store.down = True
    decision = await service.check(request(cookie=f"SESSION={issued.token}"))
    assert isinstance(decision, Deny) and decision.status == 503
    public = await service.check(request("/public/x", f"SESSION={issued.token}", ("x-user-id", "evil")))
    assert isinstance(public, Allow)
    assert public.headers_to_set == () or header(public, "x-user-id") is None
    assert "x-user-id" in public.headers_to_remove


async def test_slow_store_is_a_503_within_the_deadline(
    service: AuthzService, manager: SessionManager, store: CountingStore
) -> None:
    issued = await manager.create("alice")
    store.delay = 5.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    decision = await service.check(request(cookie=f"SESSION={issued.token}"))
    assert isinstance(decision, Deny) and decision.status == 503
    assert loop.time() - started < 1.0


async def test_unexpected_failure_is_a_503_never_an_exception(store: CountingStore, clock: Clock) -> None:
    class Broken(CountingStore):
        async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
            raise RuntimeError("bug")

    broken = Broken(clock)
    service = AuthzService(SETTINGS, broken, KeyRingSource(broken, RING), deadline=0.15, clock=clock)
    decision = await service.check(request(cookie="SESSION=" + mint_token(RING, secrets.token_bytes(32), "abc123")))
    assert isinstance(decision, Deny) and decision.status == 503


async def test_revoked_session_is_denied_on_the_next_request(service: AuthzService, manager: SessionManager) -> None:
    issued = await manager.create("alice")
    assert isinstance(await service.check(request(cookie=f"SESSION={issued.token}")), Allow)
    await manager.revoke(issued.token)
    decision = await service.check(request(cookie=f"SESSION={issued.token}"))
    assert isinstance(decision, Deny) and decision.status == 401


async def test_missing_role_is_403(service: AuthzService, manager: SessionManager) -> None:
    issued = await manager.create("alice", roles=("dev",))
    decision = await service.check(request("/admin/users", f"SESSION={issued.token}"))
    assert isinstance(decision, Deny) and decision.status == 403


async def test_shared_key_ring_is_created_once_and_reused(store: CountingStore, clock: Clock) -> None:
    first = KeyRingSource(store, None)
    second = KeyRingSource(store, None)
    assert (await first.ring()).keys == (await second.ring()).keys


async def test_replica_follows_a_shared_key_that_the_store_lost_and_someone_remade(
    store: CountingStore, clock: Clock
) -> None:
    ticks = iter(range(0, 1000, 5))
    keys = KeyRingSource(store, None, clock=lambda: float(next(ticks)))
    service = AuthzService(SETTINGS, store, keys, deadline=0.15, clock=clock)
    await keys.ring()
    # The store loses everything; a login service (another process) then makes a new key and a session.
    store._secret = None
    other = SessionManager(store, KeyRingSource(store, None), cookie_name="SESSION", idle_timeout=60,
                           absolute_timeout=600, clock=clock)  # fmt: skip
    issued = await other.create("bob")
    decision = await service.check(request(cookie=f"SESSION={issued.token}"))
    assert isinstance(decision, Allow) and decision.user_id == "bob"


async def test_replica_puts_its_shared_key_back_when_the_store_lost_it(store: CountingStore, clock: Clock) -> None:
    keys = KeyRingSource(store, None, clock=iter(range(0, 1000, 5)).__next__)
    ring = await keys.ring()
    store._secret = None
    assert await keys.refresh() is None  # nothing changed for this replica...
    assert (await KeyRingSource(store, None).ring()).keys == ring.keys  # ...and newcomers get the same key


async def test_forged_tokens_reread_the_shared_key_at_most_once_a_second(store: CountingStore, clock: Clock) -> None:
    reads = 0

    class CountingSecret(CountingStore):
        async def shared_secret(self, proposal: str) -> str:
            nonlocal reads
            reads += 1
            return await super().shared_secret(proposal)

    counting = CountingSecret(clock)
    keys = KeyRingSource(counting, None, clock=lambda: 100.0)
    service = AuthzService(SETTINGS, counting, keys, deadline=0.15, clock=clock)
    forged = mint_token(KeyRing.of([("shared", b"x" * 32)]), secrets.token_bytes(32), "abc123")
    for _ in range(50):
        assert isinstance(await service.check(request(cookie=f"SESSION={forged}")), Deny)
    assert reads == 1


def cached_service(
    store: CountingStore, clock: Clock, stale: StaleSessions | None = None, **kwargs: Any
) -> tuple[AuthzService, CachedSource, SessionCache, SessionManager]:
    """A service whose native source has a live cache (and ``stale``'s last known identities) in front of it."""
    cache = SessionCache(ttl=10, max_entries=100, max_bytes=10**6)
    keys = KeyRingSource(store, RING)
    source = CachedSource(NativeSource(store, keys, "SESSION"), cache=cache, stale=stale, clock=clock)
    source.set_live(True)
    service = AuthzService(SETTINGS, sources=[source], deadline=0.15, clock=clock, **kwargs)
    manager = SessionManager(store, keys, cookie_name="SESSION", idle_timeout=600, absolute_timeout=3600, clock=clock)
    return service, source, cache, manager


async def test_check_now_answers_without_io_only_when_nothing_needs_the_store(
    store: CountingStore, clock: Clock
) -> None:
    service, cached, _cache, manager = cached_service(store, clock)
    alice, bob = await manager.create("alice"), await manager.create("bob")
    assert isinstance(service.check_now(request()), Deny)  # no cookie: decided on the spot
    assert service.check_now(request(cookie=f"SESSION={alice.token}")) is None  # not cached yet: the store decides
    assert isinstance(await service.check(request(cookie=f"SESSION={alice.token}")), Allow)
    gets = store.gets
    fast = service.check_now(request(cookie=f"SESSION={alice.token}"))
    assert isinstance(fast, Allow) and fast.user_id == "alice" and store.gets == gets
    # Header order: bob comes first and is not cached, so only the store may say who this is.
    assert service.check_now(request(cookie=f"SESSION={bob.token}; SESSION={alice.token}")) is None
    await manager.revoke(alice.token)
    cached.invalidate([session_key(alice.token).digest])  # the channel's message for the revocation
    assert service.check_now(request(cookie=f"SESSION={alice.token}")) is None


async def test_stale_policy_answers_a_confirmed_session_through_an_outage_but_never_a_revoked_one(
    store: CountingStore, clock: Clock
) -> None:
    service, cached, _cache, manager = cached_service(store, clock, StaleSessions(max_age=30, max_entries=100))
    alice, bob = await manager.create("alice"), await manager.create("bob")
    for token in (alice.token, bob.token):
        assert isinstance(await service.check(request(cookie=f"SESSION={token}")), Allow)
    cached.invalidate([session_key(bob.token).digest])  # bob is revoked elsewhere; the channel says so
    store.down = True
    cached.set_live(False)  # the channel goes with the store
    clock.now += 20
    during = await service.check(request("/app", f"SESSION={alice.token}", ("x-user-id", "evil")))
    assert isinstance(during, Allow) and header(during, "x-user-id") == "alice"
    assert during.reason == "stale"  # visible in metrics, the decision log and Envoy's access log
    revoked = await service.check(request(cookie=f"SESSION={bob.token}"))
    assert isinstance(revoked, Deny) and revoked.status == 503
    clock.now += 11  # 31 s after the last confirmation: too old
    late = await service.check(request(cookie=f"SESSION={alice.token}"))
    assert isinstance(late, Deny) and late.status == 503


# --- what the service reports, and what it adds to an allow -------------------------------------------------


class Recorder:
    """A DecisionObserver stand-in that keeps every observation."""

    def __init__(self) -> None:
        self.seen: list[tuple[RequestView, Observation]] = []
        self.reads: list[tuple[str, str]] = []

    def decided(
        self,
        request: RequestView,
        decision: Decision,
        seconds: float,
        *,
        route: str | None,
        record: SessionRecord | None,
        invalid: str | None,
        session_source: str = "",
    ) -> None:
        self.observe(request, Observation(decision, route, record, invalid, seconds, session_source))

    def observe(self, request: RequestView, seen: Observation) -> None:
        self.seen.append((request, seen))

    def source_read(self, source: str, outcome: str) -> None:
        self.reads.append((source, outcome))


class FixedAssertions:
    header = "x-user-assertion"

    def __init__(self, token: str | None = "signed.jwt.value") -> None:
        self.token = token
        self.calls: list[tuple[str, str, dict[str, str]]] = []

    def issue(self, record: SessionRecord, host: str, context: Mapping[str, str], now: float) -> str | None:
        self.calls.append((record.user_id, host, dict(context)))
        return self.token


def observed_service(store: CountingStore, clock: Clock, **kwargs: Any) -> tuple[AuthzService, Recorder]:
    recorder = Recorder()
    service = AuthzService(
        SETTINGS, store, KeyRingSource(store, RING), deadline=0.15, clock=clock, observer=recorder, **kwargs
    )
    return service, recorder


async def test_each_check_is_observed_once_with_what_made_the_token_invalid(
    store: CountingStore, clock: Clock, manager: SessionManager
) -> None:
    service, recorder = observed_service(store, clock)
    alice = await manager.create("alice")
    forged = mint_token(KeyRing.of([("k1", b"x" * 32)]), secrets.token_bytes(32), "abc123")
    unknown = mint_token(RING, secrets.token_bytes(32), "abc123")
    for cookie in (f"SESSION={alice.token}", f"SESSION={forged}", f"SESSION={unknown}", None):
        await service.check(request(cookie=cookie))
    kinds = [(seen.decision.status, seen.invalid) for _, seen in recorder.seen]
    assert kinds == [(200, None), (401, "forged"), (401, "unknown"), (401, None)]
    assert recorder.seen[0][1].record is not None and recorder.seen[0][1].record.user_id == "alice"
    assert all(seen.seconds >= 0 and seen.route == "/" for _, seen in recorder.seen)
    assert recorder.seen[0][1].session_source == "native"
    assert [seen.session_source for _, seen in recorder.seen[1:]] == ["", "", ""]
    # A forged token is never read; the live and the unknown one are, once each.
    assert recorder.reads == [("native", "session"), ("native", "absent")]


async def test_the_no_io_fast_path_is_observed_too(store: CountingStore, clock: Clock) -> None:
    service, recorder = observed_service(store, clock)
    decision = service.check_now(request())  # no cookie: decided without I/O
    assert isinstance(decision, Deny) and len(recorder.seen) == 1


async def test_a_failing_observer_never_changes_the_answer(
    store: CountingStore, clock: Clock, manager: SessionManager
) -> None:
    class Broken(Recorder):
        def observe(self, request: RequestView, seen: Observation) -> None:
            raise RuntimeError("metrics backend exploded")

    service = AuthzService(SETTINGS, store, KeyRingSource(store, RING), deadline=0.15, clock=clock, observer=Broken())
    alice = await manager.create("alice")
    assert isinstance(await service.check(request(cookie=f"SESSION={alice.token}")), Allow)


async def test_an_allowed_session_carries_the_signed_assertion_with_the_route_context(
    store: CountingStore, clock: Clock, manager: SessionManager
) -> None:
    assertions = FixedAssertions()
    service, _ = observed_service(store, clock, assertions=assertions)
    alice = await manager.create("alice")
    view = replace(request(cookie=f"SESSION={alice.token}"), context=(("assertion_audience", "orders"),))
    decision = await service.check(view)
    assert isinstance(decision, Allow) and header(decision, "x-user-assertion") == "signed.jwt.value"
    assert assertions.calls == [("alice", "example.com", {"assertion_audience": "orders"})]


async def test_anonymous_allows_and_opted_out_routes_carry_no_assertion(
    store: CountingStore, clock: Clock, manager: SessionManager
) -> None:
    service, _ = observed_service(store, clock, assertions=FixedAssertions())
    public = await service.check(request("/public/x"))
    assert isinstance(public, Allow) and header(public, "x-user-assertion") is None
    opted_out, _ = observed_service(store, clock, assertions=FixedAssertions(token=None))
    alice = await manager.create("alice")
    decision = await opted_out.check(request(cookie=f"SESSION={alice.token}"))
    assert isinstance(decision, Allow) and header(decision, "x-user-assertion") is None


async def test_a_client_sent_assertion_header_is_removed_and_replaced(
    store: CountingStore, clock: Clock, manager: SessionManager
) -> None:
    service, _ = observed_service(store, clock, assertions=FixedAssertions())
    alice = await manager.create("alice")
    decision = await service.check(request("/app", f"SESSION={alice.token}", ("x-user-assertion", "replayed")))
    assert isinstance(decision, Allow) and header(decision, "x-user-assertion") == "signed.jwt.value"
    assert "x-user-assertion" not in decision.headers_to_remove  # Envoy removes last: it would drop ours
    anonymous = await service.check(request("/public/x", None, ("x-user-assertion", "replayed")))
    assert isinstance(anonymous, Allow) and "x-user-assertion" in anonymous.headers_to_remove


async def test_an_identity_over_the_header_budget_is_denied_not_sent_upstream(
    store: CountingStore, clock: Clock, manager: SessionManager
) -> None:
    tight = replace(SETTINGS, max_header_bytes=600)
    service = AuthzService(tight, store, KeyRingSource(store, RING), deadline=0.15, clock=clock)
    small = await manager.create("alice", roles=("dev",))
    assert isinstance(await service.check(request(cookie=f"SESSION={small.token}")), Allow)
    big = await manager.create("bob", roles=tuple(f"role-{i:03d}-" + "x" * 40 for i in range(20)))
    decision = await service.check(request(cookie=f"SESSION={big.token}"))
    assert isinstance(decision, Deny) and decision.status == 403 and decision.reason == "identity_too_large"


# --- stored records the core refuses (issue #11) -------------------------------------------------------------


class PlantedStore(CountingStore):
    """A store in which someone with write access replaced some sessions' values: reading them raises as the Redis
    store does once the core refuses the value."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.planted: dict[SessionKey, CorruptRecord] = {}

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        if key in self.planted:
            self.gets += 1
            raise self.planted[key]
        return await super().resolve(key, now)


@pytest.fixture
def planted(clock: Clock) -> PlantedStore:
    return PlantedStore(clock)


def plant(store: PlantedStore, error: CorruptRecord | None = None) -> str:
    token = mint_token(RING, secrets.token_bytes(32), "abc123")
    store.planted[session_key(token)] = error or RecordTooLarge("session record of 3000000 bytes is over the bound")
    return token


@pytest.mark.parametrize("cached", [True, False], ids=["with_cache", "without_cache"])
async def test_an_oversized_record_is_denied_naming_why_and_costs_no_store_read_for_a_few_seconds(
    planted: PlantedStore, clock: Clock, cached: bool
) -> None:
    recorder = Recorder()
    if cached:
        service = cached_service(planted, clock, observer=recorder)[0]
    else:
        service = AuthzService(
            SETTINGS, planted, KeyRingSource(planted, RING), deadline=0.15, clock=clock, observer=recorder
        )
    token = plant(planted)
    first = await service.check(request(cookie=f"SESSION={token}"))
    assert isinstance(first, Deny) and first.status == 401 and first.reason == "session_record_too_large"
    assert planted.gets == 1
    clock.now += REFUSED_FOR_SECONDS - 0.1
    again = service.check_now(request(cookie=f"SESSION={token}"))  # answered on the spot: no read, no decode
    assert isinstance(again, Deny) and again.reason == "session_record_too_large"
    assert planted.gets == 1
    clock.now += 0.1
    assert (await service.check(request(cookie=f"SESSION={token}"))).reason == "session_record_too_large"
    assert planted.gets == 2  # remembered a few seconds only
    assert [(seen.decision.reason, seen.invalid) for _, seen in recorder.seen] == [
        ("session_record_too_large", "unknown")
    ] * 3


async def test_a_corrupt_record_is_remembered_too_with_the_reason_of_an_invalid_session(
    planted: PlantedStore, clock: Clock
) -> None:
    service = AuthzService(SETTINGS, planted, KeyRingSource(planted, RING), deadline=0.15, clock=clock)
    token = plant(planted, CorruptRecord("session record is not JSON"))
    for _ in range(5):
        decision = await service.check(request(cookie=f"SESSION={token}"))
        assert isinstance(decision, Deny) and decision.status == 401 and decision.reason == "session_invalid"
    assert planted.gets == 1


async def test_a_refused_record_is_skipped_in_header_order_like_an_unknown_one(
    planted: PlantedStore, clock: Clock
) -> None:
    service, _cached, _cache, manager = cached_service(planted, clock)
    bad, alice = plant(planted), await manager.create("alice")
    cookie = f"SESSION={bad}; SESSION={alice.token}"
    decision = await service.check(request(cookie=cookie))
    assert isinstance(decision, Allow) and decision.user_id == "alice"
    gets = planted.gets
    fast = service.check_now(request(cookie=cookie))  # the refused first token no longer hides the cached second
    assert isinstance(fast, Allow) and fast.user_id == "alice" and planted.gets == gets


async def test_the_invalidation_of_a_refused_key_makes_the_next_check_read_the_store(
    planted: PlantedStore, clock: Clock
) -> None:
    service, cached, _cache, _manager = cached_service(planted, clock)
    token = plant(planted)
    await service.check(request(cookie=f"SESSION={token}"))
    assert service.check_now(request(cookie=f"SESSION={token}")) is not None
    del planted.planted[session_key(token)]  # an operator revokes the session: the channel publishes its key
    cached.invalidate([session_key(token).digest])
    assert service.check_now(request(cookie=f"SESSION={token}")) is None  # the store decides again
    decision = await service.check(request(cookie=f"SESSION={token}"))
    assert isinstance(decision, Deny) and decision.reason == "session_invalid"  # now simply unknown
    assert planted.gets == 2


# --- the source seam: verification once per Check, one cache lookup per Check, sources in order ------------------


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the native source's MAC checks of a request's cookies (one entry per call)."""
    calls: list[int] = []
    real = native.VerifiedTokens.keys

    def counted(self: native.VerifiedTokens, ring: KeyRing, values: Any) -> tuple[SessionKey, ...]:
        calls.append(1)
        return real(self, ring, values)

    monkeypatch.setattr(native.VerifiedTokens, "keys", counted)
    return calls


async def test_cookies_are_verified_once_per_check_whatever_path_it_takes(
    store: CountingStore, clock: Clock, verifications: list[int]
) -> None:
    service, cached, _cache, manager = cached_service(store, clock, StaleSessions(max_age=30, max_entries=100))
    alice = await manager.create("alice")
    cookie = f"SESSION={alice.token}"
    paths = {}
    for path, prepare in (
        ("cache miss", lambda: None),
        ("cache hit", lambda: None),
        ("stale answer", lambda: (setattr(store, "down", True), cached.set_live(False))),
        ("store down", lambda: setattr(clock, "now", clock.now + 60)),
    ):
        prepare()
        verifications.clear()
        decision = await service.check(request(cookie=cookie))
        paths[path] = (decision.reason, len(verifications))
    assert paths == {
        "cache miss": ("session", 1),
        "cache hit": ("session", 1),
        "stale answer": ("stale", 1),
        "store down": ("session_store_unavailable", 1),
    }


async def test_a_shared_key_ring_read_on_the_first_check_still_verifies_once(
    store: CountingStore, clock: Clock, verifications: list[int]
) -> None:
    keys = KeyRingSource(store, None)
    service = AuthzService(SETTINGS, store, keys, deadline=0.15, clock=clock)
    manager = SessionManager(store, KeyRingSource(store, None), cookie_name="SESSION", idle_timeout=60,
                             absolute_timeout=600, clock=clock)  # fmt: skip
    alice = await manager.create("alice")
    assert keys.cached is None  # begin cannot verify: finish reads the ring, then verifies
    assert isinstance(await service.check(request(cookie=f"SESSION={alice.token}")), Allow)
    assert len(verifications) == 1


async def test_a_cache_missing_check_counts_one_miss_and_a_cached_one_one_hit(
    store: CountingStore, clock: Clock
) -> None:
    service, _cached, cache, manager = cached_service(store, clock)
    alice, bob = await manager.create("alice"), await manager.create("bob")
    assert isinstance(await service.check(request(cookie=f"SESSION={alice.token}")), Allow)
    assert (cache.hits, cache.misses) == (0, 1)
    assert isinstance(await service.check(request(cookie=f"SESSION={alice.token}")), Allow)
    assert (cache.hits, cache.misses) == (1, 1)
    # Two cookies, neither cached: two lookups, each counted once (begin glances, finish counts).
    assert isinstance(await service.check(request(cookie=f"SESSION={bob.token}; SESSION={alice.token}")), Allow)
    assert (cache.hits, cache.misses) == (1, 2)
    metrics = Metrics(CollectorRegistry())
    metrics.sync_cache(cache.stats())
    assert metrics.registry.get_sample_value("sidecar_cache_lookups_total", {"result": "miss"}) == 2
    assert metrics.registry.get_sample_value("sidecar_cache_lookups_total", {"result": "hit"}) == 1


OTHER_RING = KeyRing.of([("o1", b"o" * 32)])


async def test_sources_are_asked_in_order_each_with_its_own_cookie(clock: Clock) -> None:
    first_store, second_store = CountingStore(clock), CountingStore(clock)
    first = NativeSource(first_store, KeyRingSource(first_store, RING), "SESSION")
    second = NativeSource(second_store, KeyRingSource(second_store, OTHER_RING), "OTHER")
    settings = replace(SETTINGS, cookie_names=("SESSION", "OTHER"))
    service = AuthzService(settings, sources=[CachedSource(first), CachedSource(second)], deadline=0.15, clock=clock)

    def manager(store: CountingStore, ring: KeyRing, name: str) -> SessionManager:
        return SessionManager(store, KeyRingSource(store, ring), cookie_name=name, idle_timeout=60,
                              absolute_timeout=600, clock=clock)  # fmt: skip

    alice = await manager(first_store, RING, "SESSION").create("alice")
    bob = await manager(second_store, OTHER_RING, "OTHER").create("bob")
    both = await service.check(request(cookie=f"OTHER={bob.token}; SESSION={alice.token}"))
    assert isinstance(both, Allow) and both.user_id == "alice"  # source order, not header order
    kept = await service.check(request(cookie=f"x=1; OTHER={bob.token}"))
    assert isinstance(kept, Allow) and ("cookie", "x=1") in kept.headers_to_set  # every source's cookie is stripped
    unknown = mint_token(RING, secrets.token_bytes(32), "abc123")
    second_wins = await service.check(request(cookie=f"SESSION={unknown}; OTHER={bob.token}"))
    assert isinstance(second_wins, Allow) and second_wins.user_id == "bob"
    # A cookie of one source is never offered to the other: bob's token under SESSION is forged for the first.
    reads = (first_store.gets, second_store.gets)
    forged = await service.check(request(cookie=f"SESSION={bob.token}"))
    assert isinstance(forged, Deny) and forged.reason == "session_invalid"
    assert (first_store.gets, second_store.gets) == reads


def test_a_source_whose_cookie_the_settings_do_not_read_is_refused_at_construction(clock: Clock) -> None:
    store = CountingStore(clock)
    other = CachedSource(NativeSource(store, KeyRingSource(store, RING), "OTHER"))
    with pytest.raises(ValueError, match="session cookies OTHER are not among the settings' cookie_names"):
        AuthzService(SETTINGS, sources=[other], deadline=0.15)
    with pytest.raises(ValueError, match="at least one session source"):
        AuthzService(SETTINGS, deadline=0.15)


class ScriptedSource:
    """A source whose store answers each key as scripted (a record, None, or a failure), and which remembers a
    last known identity for every key (as failure_policy stale would)."""

    def __init__(self, name: str, cookie: str, answers: dict[str, SessionRecord | Exception | None]) -> None:
        self.name = name
        self.cookie_names = (cookie,)
        self.answers = answers
        self.fallbacks: list[str] = []

    def candidates_now(self, values: tuple[str, ...]) -> tuple[SessionKey, ...]:
        return tuple(SessionKey("", value) for value in values)

    async def candidates(
        self, values: tuple[str, ...], at_hand: tuple[SessionKey, ...] | None
    ) -> tuple[SessionKey, ...]:
        return at_hand if at_hand is not None else self.candidates_now(values)

    def lookup_now(self, key: SessionKey, now: float) -> None:
        return None

    async def lookup(self, key: SessionKey, now: float) -> SessionRecord | None:
        answer = self.answers[key.digest]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def fallback(self, key: SessionKey, now: float) -> SessionRecord | None:
        self.fallbacks.append(key.digest)
        return SessionRecord(session_id=f"last-{key.digest}", user_id=f"last-known-{key.digest}", email=None, roles=())


async def test_a_store_failure_falls_back_on_the_candidate_being_read_never_on_one_just_answered(clock: Clock) -> None:
    down = StoreUnavailable("down")
    first = ScriptedSource("first", "A", {"gone": None})
    second = ScriptedSource("second", "B", {"failing": down})
    settings = replace(SETTINGS, cookie_names=("A", "B"))
    service = AuthzService(settings, sources=[first, second], deadline=0.15, clock=clock)
    decision = await service.check(request(cookie="A=gone; B=failing"))
    # The first source's store said "gone": its last known identity must not come back because the second failed.
    assert isinstance(decision, Allow) and decision.user_id == "last-known-failing"
    assert (first.fallbacks, second.fallbacks) == ([], ["failing"])

    within = ScriptedSource("one", "A", {"gone": None, "failing": down})
    service = AuthzService(replace(SETTINGS, cookie_names=("A",)), sources=[within], deadline=0.15, clock=clock)
    assert isinstance(await service.check(request(cookie="A=gone; A=failing")), Allow)
    assert within.fallbacks == ["failing"]


async def test_threads_answering_from_the_cache_never_serve_a_session_after_its_invalidation_was_applied(
    store: CountingStore, clock: Clock
) -> None:
    """gRPC handler threads decide cache hits (``check_now``) while the event loop caches, revokes and applies the
    channel's invalidations: a lookup begun after an invalidation returned never answers with that session, and
    no race surfaces as an error (a 503) or an exception."""
    service, cached, _cache, manager = cached_service(store, clock)
    tokens: list[str] = []
    revoked: set[int] = set()  # indexes into tokens whose invalidation has been applied (returned)
    stop = threading.Event()
    found: list[tuple[int, int, int, int]] = []  # per thread: hits, revoked tokens asked, violations, 503s
    errors: list[BaseException] = []

    def read(seed: int) -> None:
        rng = random.Random(seed)
        hits = asked_revoked = violations = unavailable = 0
        try:
            while not stop.is_set():
                index = rng.randrange(len(tokens))
                was_revoked = index in revoked  # before the lookup begins
                decision = service.check_now(request(cookie=f"SESSION={tokens[index]}"))
                asked_revoked += was_revoked
                if isinstance(decision, Allow):
                    hits += 1
                    violations += was_revoked
                elif isinstance(decision, Deny) and decision.status == 503:
                    unavailable += 1
        except BaseException as exc:
            errors.append(exc)
        found.append((hits, asked_revoked, violations, unavailable))

    for i in range(8):
        tokens.append((await manager.create(f"user{i}")).token)
        assert isinstance(await service.check(request(cookie=f"SESSION={tokens[-1]}")), Allow)  # now cached
    live = list(range(len(tokens)))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # hand the GIL around often, so the threads interleave inside the cache
    threads = [threading.Thread(target=read, args=(seed,)) for seed in range(6)]
    try:
        for thread in threads:
            thread.start()
        for cycle in range(300):
            index = live.pop(cycle * 7 % len(live))
            await manager.revoke(tokens[index])
            cached.invalidate([session_key(tokens[index]).digest])  # the channel's message for the revocation
            revoked.add(index)
            tokens.append((await manager.create(f"user{len(tokens)}")).token)
            assert isinstance(await service.check(request(cookie=f"SESSION={tokens[-1]}")), Allow)
            live.append(len(tokens) - 1)
            await asyncio.sleep(0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        sys.setswitchinterval(switch)
    assert not errors
    hits, asked_revoked, violations, unavailable = (sum(column) for column in zip(*found, strict=True))
    assert hits > 100 and asked_revoked > 100  # both sides of the race were exercised
    assert violations == 0
    assert unavailable == 0
