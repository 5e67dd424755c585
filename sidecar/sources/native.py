"""The sidecar's own sessions: MAC'd tokens (``core.tokens``) naming sealed records in its store.

A cookie value is a candidate only when it is a well-formed token whose MAC verifies with the key ring, so a forged
or mangled one never reaches the store. The key ring is either configured or shared through the store
(``KeyRingSource``): until it has been read, and when no value verifies (the shared key may have been remade
since), only the async path can tell.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sidecar.core.reasons import Reason
from sidecar.core.session import RecordTooLarge, SessionRecord, is_live
from sidecar.core.tokens import KeyRing, SessionKey, session_key, verify_token
from sidecar.errors import CorruptRecord
from sidecar.keyring import KeyRingSource
from sidecar.sources.base import MAX_CANDIDATES, Lookup
from sidecar.store.base import SessionStore

log = logging.getLogger("sidecar.authz")


def tokens_to_try(ring: KeyRing, values: Iterable[str]) -> tuple[str, ...]:
    """The first MAX_CANDIDATES values whose MAC verifies, in order; forged ones never reach the store."""
    verified: list[str] = []
    for token in values:
        if verify_token(ring, token):
            verified.append(token)
            if len(verified) == MAX_CANDIDATES:
                break
    return tuple(verified)


def refusal(error: CorruptRecord) -> Reason:
    """Why a stored record is refused: over the bounds (refused before it was decoded) or unusable."""
    return Reason.RECORD_TOO_LARGE if isinstance(error, RecordTooLarge) else Reason.RECORD_CORRUPT


class NativeSource:
    name = "native"

    def __init__(self, store: SessionStore, keys: KeyRingSource, cookie_name: str) -> None:
        self._store = store
        self._keys = keys
        self.cookie_names = (cookie_name,)

    def candidates_now(self, values: tuple[str, ...]) -> tuple[SessionKey, ...] | None:
        ring = self._keys.cached
        return None if ring is None else tuple(map(session_key, tokens_to_try(ring, values)))

    async def candidates(
        self, values: tuple[str, ...], at_hand: tuple[SessionKey, ...] | None
    ) -> tuple[SessionKey, ...]:
        if at_hand is None:
            at_hand = _keys_of(tokens_to_try(self._keys.cached or await self._keys.ring(), values))
        if not at_hand and (fresh := await self._keys.refresh()) is not None:
            at_hand = _keys_of(tokens_to_try(fresh, values))  # another key ring: verified once more, with it
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


def _keys_of(tokens: tuple[str, ...]) -> tuple[SessionKey, ...]:
    return tuple(map(session_key, tokens))
