"""The native source: MAC-verified tokens become candidates (forged ones never reach the store), a candidate
resolves to its live session, and a refused record is named."""

from __future__ import annotations

import secrets

import pytest

from sidecar.core.reasons import Reason
from sidecar.core.session import RecordTooLarge, SessionRecord, new_session
from sidecar.core.tokens import ENTROPY_BYTES, KeyRing, SessionKey, mint_token, session_key
from sidecar.errors import CorruptRecord
from sidecar.keyring import KeyRingSource
from sidecar.sources import native
from sidecar.sources.base import MAX_CANDIDATES
from sidecar.sources.native import NativeSource, VerifiedTokens
from sidecar.store.memory import MemoryStore

RING = KeyRing.of([("k1", b"\x01" * 32)])
FORGER = KeyRing.of([("k1", b"\x02" * 32)])  # same kid, wrong secret
STRANGER = KeyRing.of([("k9", b"\x01" * 32)])  # unknown kid
NOW = 1_800_000_000.0


def _token(ring: KeyRing = RING) -> str:
    return mint_token(ring, secrets.token_bytes(ENTROPY_BYTES), "abc123")


V1, V2, V3, V4 = (_token() for _ in range(4))
FORGED = _token(FORGER)
UNKNOWN_KID = _token(STRANGER)
GARBAGE = "not-a-token"

TOKENS_TO_TRY: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("none", [], ()),
    ("one_valid", [V1], (V1,)),
    ("garbage_only", [GARBAGE, "", "s1.k1.x.y"], ()),
    ("forged_only", [FORGED, UNKNOWN_KID], ()),
    ("skips_garbage_and_forged", [GARBAGE, FORGED, V1, UNKNOWN_KID, V2], (V1, V2)),
    ("stops_at_three", [V1, V2, V3, V4], (V1, V2, V3)),
    ("forged_do_not_use_up_a_slot", [FORGED, V1, GARBAGE, V2, UNKNOWN_KID, V3, V4], (V1, V2, V3)),
    ("keeps_header_order", [V3, V1, V2], (V3, V1, V2)),
    ("many_forged_before_valid", [FORGED] * 50 + [V1], (V1,)),
]


@pytest.mark.parametrize(("cookies", "expected"), [c[1:] for c in TOKENS_TO_TRY], ids=[c[0] for c in TOKENS_TO_TRY])
def test_verified_tokens_skip_unverified_ones_and_stop_at_three(cookies: list[str], expected: tuple[str, ...]) -> None:
    assert MAX_CANDIDATES == 3
    verified = VerifiedTokens()
    keys = tuple(session_key(token) for token in expected)
    assert verified.keys(RING, cookies) == keys
    assert verified.keys(RING, cookies) == keys  # the same from the memo


def test_a_verified_token_is_remembered_and_a_forged_one_never(monkeypatch: pytest.MonkeyPatch) -> None:
    macs: list[str] = []
    real = native.verify_token
    monkeypatch.setattr(native, "verify_token", lambda ring, token: macs.append(token) or real(ring, token))
    verified = VerifiedTokens()
    for _ in range(3):
        assert verified.keys(RING, [FORGED, V1]) == (session_key(V1),)
    assert macs == [FORGED, V1, FORGED, FORGED]  # V1's MAC once; a forged token is checked every time
    assert len(verified) == 1


def test_a_token_verified_under_one_key_ring_is_checked_again_under_another() -> None:
    verified = VerifiedTokens()
    assert verified.keys(RING, [V1]) == (session_key(V1),)
    assert verified.keys(FORGER, [V1]) == ()  # the ring changed (the shared key was remade): V1 no longer verifies
    assert verified.keys(KeyRing.of(RING.keys), [V1]) == (session_key(V1),)  # an equal ring, a new object


def test_the_verified_token_memo_is_bounded() -> None:
    verified = VerifiedTokens(max_entries=2)
    for token in (V1, V2, V3, V4):
        verified.keys(RING, [token])
        assert len(verified) <= 2


class Planted(MemoryStore):
    """A memory store that counts reads and answers some keys with a refused record."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: NOW)
        self.reads = 0
        self.planted: dict[SessionKey, CorruptRecord] = {}

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        self.reads += 1
        if key in self.planted:
            raise self.planted[key]
        return await super().resolve(key, now)


def record(idle: float = 60) -> SessionRecord:
    return new_session(session_id="s", user_id="alice", email=None, roles=(), attributes={}, idle_timeout=idle,
                       absolute_timeout=600, now=NOW)  # fmt: skip


@pytest.fixture
def store() -> Planted:
    return Planted()


def test_the_source_owns_its_cookie_name(store: Planted) -> None:
    assert NativeSource(store, KeyRingSource(store, RING), "__Host-session").cookie_names == ("__Host-session",)


async def test_candidates_are_the_verified_tokens_keys_and_need_the_ring_read_first(store: Planted) -> None:
    keys = KeyRingSource(store, None)
    source = NativeSource(store, keys, "SESSION")
    ring = await KeyRingSource(store, None).ring()  # another process makes the shared key
    token = mint_token(ring, secrets.token_bytes(ENTROPY_BYTES), "abc123")
    assert source.candidates_now((FORGED, token)) is None  # this process has not read the ring yet
    assert await source.candidates((FORGED, token), None) == (session_key(token),)
    assert source.candidates_now((FORGED, token)) == (session_key(token),)


async def test_candidates_at_hand_are_reused_not_verified_again(store: Planted) -> None:
    source = NativeSource(store, KeyRingSource(store, RING), "SESSION")
    at_hand = (session_key(V2),)
    assert await source.candidates((V1,), at_hand) == at_hand  # V1 would verify: it was not looked at again


async def test_a_live_session_is_found_and_a_lapsed_or_absent_one_is_not(store: Planted) -> None:
    source = NativeSource(store, KeyRingSource(store, RING), "SESSION")
    live, lapsed = session_key(V1), session_key(V2)
    await store.create(live, record())
    await store.create(lapsed, record(idle=10))
    assert await source.lookup(live, NOW + 5) == record()
    assert await source.lookup(lapsed, NOW + 11) is None  # a store whose TTL has not fired yet still has it
    assert await source.lookup(session_key(V3), NOW) is None
    assert source.lookup_now(live, NOW) is None and source.fallback(live, NOW) is None  # everything is a read


@pytest.mark.parametrize(
    ("error", "reason"),
    [(RecordTooLarge("3 MB"), Reason.RECORD_TOO_LARGE), (CorruptRecord("not JSON"), Reason.RECORD_CORRUPT)],
    ids=["too_large", "corrupt"],
)
async def test_a_refused_record_is_named_not_raised(store: Planted, error: CorruptRecord, reason: Reason) -> None:
    source = NativeSource(store, KeyRingSource(store, RING), "SESSION")
    store.planted[session_key(V1)] = error
    assert await source.lookup(session_key(V1), NOW) is reason
