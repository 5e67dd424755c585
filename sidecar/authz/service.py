"""The authorization service: the core's decision plus the I/O it needs (key ring, store, touch).

Protocol adapters (gRPC v3 today) translate into ``RequestView`` and out of ``Decision``; nothing here knows
about Envoy. ``check`` never raises: any failure of the store, its deadline or this code becomes a Deny (503),
because an exception would surface as a gRPC error that ``failure_mode_allow`` could turn into an allow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sidecar.core.decision import Decision, EdgeSettings, decide, inspect, tokens_to_try, unavailable
from sidecar.core.request import RequestView
from sidecar.core.session import SessionRecord, is_live, needs_touch, touched, ttl_ms
from sidecar.core.tokens import token_key
from sidecar.errors import CorruptRecord, StoreError
from sidecar.sessions import KeyRingSource
from sidecar.store.base import SessionStore

log = logging.getLogger("sidecar.authz")


class AuthzService:
    def __init__(
        self,
        settings: EdgeSettings,
        store: SessionStore,
        keys: KeyRingSource,
        *,
        deadline: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._keys = keys
        self._deadline = deadline
        self._clock = clock
        self._touches: set[asyncio.Task[None]] = set()

    async def check(self, request: RequestView) -> Decision:
        try:
            return await self._check(request)
        except Exception:
            log.exception("check failed unexpectedly; denying with 503")
            return unavailable()

    async def _check(self, request: RequestView) -> Decision:
        settings = self._settings
        inspection = inspect(settings, request)
        if not inspection.session_cookies:
            return decide(settings, request, inspection, None)
        try:
            async with asyncio.timeout(self._deadline):
                ring = self._keys.cached or await self._keys.ring()
                tokens = tokens_to_try(ring, inspection)
                if not tokens and (fresh := await self._keys.refresh()) is not None:
                    tokens = tokens_to_try(fresh, inspection)
                if not tokens:
                    return decide(settings, request, inspection, None, invalid_reason="session_invalid")
                record = await self._resolve(tokens)
        except (StoreError, TimeoutError) as exc:
            log.warning("session store failed: %s", exc or "deadline exceeded")
            return decide(settings, request, inspection, None, store_failed=True)
        return decide(settings, request, inspection, record, invalid_reason="session_invalid")

    async def _resolve(self, tokens: tuple[str, ...]) -> SessionRecord | None:
        """The first token, in header order, that names a live session."""
        for token in tokens:
            key = token_key(token)
            try:
                record = await self._store.get(key)
            except CorruptRecord as exc:
                log.error("unusable session record %s…: %s", key[:12], exc)
                continue
            now = self._clock()
            if record is None or not is_live(record, now):
                continue
            if needs_touch(record, now):
                self._touch_later(key, touched(record, now), now)
            return record
        return None

    def _touch_later(self, key: str, record: SessionRecord, now: float) -> None:
        # Refreshing last_seen is not on the answer's critical path; it runs after the response is built.
        task = asyncio.get_running_loop().create_task(self._touch(key, record, ttl_ms(record, now)))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def _touch(self, key: str, record: SessionRecord, ttl: int) -> None:
        try:
            async with asyncio.timeout(self._deadline * 4):
                await self._store.touch(key, record, ttl)
        except (StoreError, TimeoutError) as exc:
            log.warning("could not refresh session %s: %s", record.session_id, exc or "deadline exceeded")

    async def drain(self) -> None:
        """Wait for pending touches (graceful shutdown)."""
        if self._touches:
            await asyncio.gather(*self._touches, return_exceptions=True)
