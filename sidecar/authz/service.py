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

from sidecar.core.decision import Decision, EdgeSettings, Inspection, decide, inspect, tokens_to_try, unavailable
from sidecar.core.request import RequestView
from sidecar.core.session import SessionRecord, is_live
from sidecar.core.tokens import session_key
from sidecar.errors import CorruptRecord, StoreError
from sidecar.sessions import KeyRingSource
from sidecar.store.base import SessionStore
from sidecar.store.cache import SessionCache

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
        cache: SessionCache | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._keys = keys
        self._deadline = deadline
        self._clock = clock
        self._cache = cache

    def check_now(self, request: RequestView) -> Decision | None:
        """The decision when it needs no I/O (no session cookie, or the first verified token is a cache hit), so an
        adapter can answer without scheduling anything; None when only ``check`` can tell."""
        try:
            return self._decide_now(request, inspect(self._settings, request))
        except Exception:
            return None  # check() takes it from here and logs what goes wrong

    def _decide_now(self, request: RequestView, inspection: Inspection) -> Decision | None:
        settings = self._settings
        if not inspection.session_cookies:
            return decide(settings, request, inspection, None)
        ring, cache = self._keys.cached, self._cache
        if ring is None or cache is None:
            return None
        tokens = tokens_to_try(ring, inspection)
        if not tokens:
            return None  # maybe a new shared key: check() re-reads it
        now = self._clock()
        record = cache.get(session_key(tokens[0]), now)  # header order: only the first may answer here
        if record is None or not is_live(record, now):
            return None
        return decide(settings, request, inspection, record)

    async def check(self, request: RequestView) -> Decision:
        try:
            inspection = inspect(self._settings, request)  # once, for the fast and the slow path
            return self._decide_now(request, inspection) or await self._check(request, inspection)
        except Exception:
            log.exception("check failed unexpectedly; denying with 503")
            return unavailable()

    async def _check(self, request: RequestView, inspection: Inspection) -> Decision:
        settings = self._settings
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
            stale = self._last_known(inspection)
            if stale is not None:
                return decide(settings, request, inspection, stale)
            return decide(settings, request, inspection, None, store_failed=True)
        return decide(settings, request, inspection, record, invalid_reason="session_invalid")

    def _last_known(self, inspection: Inspection) -> SessionRecord | None:
        """failure_policy stale: the identity of the first verified token, as last confirmed (never a revoked one)."""
        stale, ring = self._cache.stale if self._cache is not None else None, self._keys.cached
        if stale is None or ring is None:
            return None
        tokens = tokens_to_try(ring, inspection)
        record = stale.recall(session_key(tokens[0]), self._clock()) if tokens else None
        if record is not None:
            log.info("store unavailable: answering session %s from its last known identity", record.session_id)
        return record

    async def _resolve(self, tokens: tuple[str, ...]) -> SessionRecord | None:
        """The first token, in header order, that names a live session (its read also refreshes last-seen)."""
        for token in tokens:
            key = session_key(token)
            try:
                record = await self._store.resolve(key, self._clock())
            except CorruptRecord as exc:
                log.error("unusable session record %s…: %s", key.digest[:12], exc)
                continue
            now = self._clock()
            if record is not None and is_live(record, now):
                if self._cache is not None and self._cache.stale is not None:
                    self._cache.stale.remember(key, record, now)
                return record
        return None
