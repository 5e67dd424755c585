"""The sidecar's own sessions: MAC'd tokens (``core.tokens``) naming sealed records in its store.

A cookie value is a candidate only when it is a well-formed token whose MAC verifies with the key ring, so a forged
or mangled one never reaches the store. The key ring is either configured or shared through the store
(``KeyRingSource``): until it has been read, and when no value verifies (the shared key may have been remade
since), only the async path can tell.

A token that verified is remembered with its store key (``VerifiedTokens``), per key ring: a logged-in user's
next request costs a dict lookup, not a MAC and a SHA-256 (a third of a cache hit's own work, issue #14). Only
tokens whose MAC verified are kept, so forged ones cannot fill it; a new ring starts an empty memo.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sidecar.core.memo import keep
from sidecar.core.reasons import Reason
from sidecar.core.session import RecordTooLarge, SessionRecord, is_live
from sidecar.core.tokens import KeyRing, SessionKey, session_key, verify_token
from sidecar.errors import CorruptRecord
from sidecar.keyring import KeyRingSource
from sidecar.sources.base import MAX_CANDIDATES, Lookup
from sidecar.store.base import SessionStore

log = logging.getLogger("sidecar.authz")


MAX_VERIFIED_TOKENS = 8192  # tokens of the sessions seen last; a few hundred bytes each


class VerifiedTokens:
    """Store keys of the tokens that verified under one key ring (at most ``max_entries``; full, it starts over).

    Read and written by gRPC handler threads and the event loop at once: the (ring, memo) pair is replaced as one
    attribute, so an entry verified under a previous ring never answers for the current one."""

    def __init__(self, max_entries: int = MAX_VERIFIED_TOKENS) -> None:
        self._max_entries = max_entries
        self._memo: tuple[KeyRing | None, dict[str, SessionKey]] = (None, {})

    def keys(self, ring: KeyRing, values: Iterable[str]) -> tuple[SessionKey, ...]:
        """The store keys of the first MAX_CANDIDATES values whose MAC verifies with ``ring``, in order."""
        memo_ring, memo = self._memo
        if memo_ring is not ring:
            memo = {}
            self._memo = (ring, memo)
        found: list[SessionKey] = []
        for token in values:
            key = memo.get(token)
            if key is None:
                if not verify_token(ring, token):
                    continue
                key = keep(memo, token, session_key(token), self._max_entries)
            found.append(key)
            if len(found) == MAX_CANDIDATES:
                break
        return tuple(found)

    def __len__(self) -> int:
        return len(self._memo[1])


def refusal(error: CorruptRecord) -> Reason:
    """Why a stored record is refused: over the bounds (refused before it was decoded) or unusable."""
    return Reason.RECORD_TOO_LARGE if isinstance(error, RecordTooLarge) else Reason.RECORD_CORRUPT


class NativeSource:
    name = "native"

    def __init__(self, store: SessionStore, keys: KeyRingSource, cookie_name: str) -> None:
        self._store = store
        self._keys = keys
        self.cookie_names = (cookie_name,)
        self.verified = VerifiedTokens()

    def candidates_now(self, values: tuple[str, ...]) -> tuple[SessionKey, ...] | None:
        ring = self._keys.cached
        return None if ring is None else self.verified.keys(ring, values)

    async def candidates(
        self, values: tuple[str, ...], at_hand: tuple[SessionKey, ...] | None
    ) -> tuple[SessionKey, ...]:
        if at_hand is None:
            at_hand = self.verified.keys(self._keys.cached or await self._keys.ring(), values)
        if not at_hand and (fresh := await self._keys.refresh()) is not None:
            at_hand = self.verified.keys(fresh, values)  # another key ring: verified once more, with it
        return at_hand

    def lookup_now(self, key: SessionKey, now: float) -> Lookup:
        return None  # every answer of this source is in the store

    async def lookup(self, key: SessionKey, now: float) -> Lookup:
        try:
            record = await self._store.resolve(key, now)
        except CorruptRecord as exc:
            log.error("unusable session record %s…: %s", key.digest[:12], exc)
            return refusal(exc)
        return record if record is not None and is_live(record, now) else None

    def fallback(self, key: SessionKey, now: float) -> SessionRecord | None:
        return None
