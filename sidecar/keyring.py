"""The key ring session tokens are signed with: the configured one, or one shared through the store.

The request path (``sources/native.py``) verifies with it; the lifecycle (``sidecar.lifecycle``) mints with it.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable

from sidecar.core.tokens import MIN_SECRET_BYTES, KeyRing, decode_secret, encode_secret
from sidecar.errors import StoreUnavailable
from sidecar.store.base import SessionStore

SHARED_KID = "shared"
# How often a replica may re-read the shared key after a token failed its MAC: bounds what a flood of forged
# tokens can cost the store to one read a second.
SHARED_KEY_REFRESH_SECONDS = 1.0


class KeyRingSource:
    """The configured key ring, or else one shared through the store and cached once read.

    The shared ring is created by whichever replica (or CLI call) needs it first (SET NX), so every process of a
    deployment signs and verifies with the same key without any configuration.
    """

    def __init__(
        self, store: SessionStore, configured: KeyRing | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ring = configured
        self._shared = configured is None
        self._clock = clock
        self._last_read = -math.inf
        self._lock = asyncio.Lock()

    @property
    def cached(self) -> KeyRing | None:
        return self._ring

    async def ring(self) -> KeyRing:
        if self._ring is not None:
            return self._ring
        async with self._lock:
            if self._ring is None:
                self._ring = await self._read_shared(secrets.token_bytes(MIN_SECRET_BYTES))
            return self._ring

    async def refresh(self) -> KeyRing | None:
        """Re-read the shared key after a MAC failure; the new ring when it changed, else None.

        The store may have lost the key (a restart without persistence, a flush, a failover to an empty replica)
        and a CLI or another replica may have made a new one since. Offering the cached key as the proposal puts
        it back when nobody did, so sessions signed with it keep working.
        """
        if not self._shared or self._ring is None or self._clock() - self._last_read < SHARED_KEY_REFRESH_SECONDS:
            return None
        async with self._lock:
            current = self._ring
            fresh = await self._read_shared(current.keys[0][1])
            if fresh == current:
                return None
            self._ring = fresh
            return fresh

    async def _read_shared(self, proposal: bytes) -> KeyRing:
        self._last_read = self._clock()
        stored = await self._store.shared_secret(encode_secret(proposal))
        try:
            return KeyRing.of([(SHARED_KID, decode_secret(stored))])
        except ValueError as exc:
            raise StoreUnavailable(f"the shared key ring in the store is unusable: {exc}") from None
