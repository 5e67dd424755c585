"""The authorization service: the core's decision plus the I/O it needs (key ring, store, touch).

Protocol adapters (gRPC v3, HTTP) translate into ``RequestView`` and out of ``Decision``; nothing here knows
about Envoy. ``check`` never raises: any failure of the store, its deadline or this code becomes a Deny (503),
because an exception would surface as a gRPC error that ``failure_mode_allow`` could turn into an allow. Every
decision, from either entry point, is reported once to the observer (metrics and the decision log).

A stored record the core refuses (corrupt, or over the size bounds) is a 401 naming why, and its key is remembered a
few seconds (``RefusedRecords``): a client repeating the token is denied without a store read or a decode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Protocol

from sidecar.authz.observer import DecisionObserver, Observation
from sidecar.core.decision import (
    Allow,
    Decision,
    EdgeSettings,
    Inspection,
    decide,
    inspect,
    tokens_to_try,
    unavailable,
)
from sidecar.core.request import RequestView
from sidecar.core.session import RecordTooLarge, SessionRecord, is_live
from sidecar.core.tokens import SessionKey, session_key
from sidecar.errors import CorruptRecord, StoreError
from sidecar.sessions import KeyRingSource
from sidecar.store.base import SessionStore
from sidecar.store.cache import RefusedRecords, SessionCache

log = logging.getLogger("sidecar.authz")
_NO_CONTEXT: Mapping[str, str] = MappingProxyType({})  # most routes set no context_extensions: no dict per allow

# Deny reasons of a verified token whose stored record was refused.
RECORD_TOO_LARGE = "session_record_too_large"  # over the size or count bounds: refused before it was decoded
RECORD_CORRUPT = "session_invalid"  # does not decode, open or validate: the reason of an unknown token, as before


def refusal_reason(error: CorruptRecord) -> str:
    return RECORD_TOO_LARGE if isinstance(error, RecordTooLarge) else RECORD_CORRUPT


class IdentityAssertions(Protocol):
    """Signs the identity of an allowed session for the upstream (``sidecar.assertions.AssertionIssuer``)."""

    @property
    def header(self) -> str: ...

    def issue(self, record: SessionRecord, host: str, context: Mapping[str, str], now: float) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _Outcome:
    decision: Decision
    record: SessionRecord | None = None  # the session the decision was about, when one resolved
    invalid: str | None = None  # "forged" (no cookie verified) or "unknown" (verified, but no live session)


@dataclass(frozen=True, slots=True)
class _Resolved:
    record: SessionRecord | None
    refused: str | None = None  # why a verified token's record was refused, when one was and none resolved


@dataclass(frozen=True, slots=True)
class Pending:
    """A check that needs the key ring or the store: what ``begin`` already worked out, for ``finish``."""

    request: RequestView
    inspection: Inspection
    started: float  # perf_counter() at arrival, so the latency covers both halves


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
        observer: DecisionObserver | None = None,
        assertions: IdentityAssertions | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._keys = keys
        self._deadline = deadline
        self._clock = clock
        self._cache = cache
        # Shared with the cache when there is one, so the invalidation channel evicts refused keys too.
        self._refused = cache.refused if cache is not None else RefusedRecords()
        self._observer = observer
        self._assertions = assertions

    def begin(self, request: RequestView) -> Decision | Pending:
        """The decision when it needs no I/O (no session cookie, or the first verified token is a cache hit), so an
        adapter can answer without scheduling anything; else a ``Pending`` check for ``finish``, which reuses what
        was read here (the request is inspected once)."""
        started = time.perf_counter()
        inspection: Inspection | None = None
        try:
            inspection = inspect(self._settings, request)
            outcome = self._decide_now(request, inspection)
            if outcome is None:
                return Pending(request, inspection, started)
        except Exception:
            log.exception("check failed unexpectedly; denying with 503")
            outcome = _Outcome(unavailable())
        self._observe(request, inspection, outcome, started)
        return outcome.decision

    async def finish(self, pending: Pending) -> Decision:
        """The decision of a check ``begin`` could not make alone: the key ring and the store are asked."""
        try:
            outcome = await self._check(pending.request, pending.inspection)
        except Exception:
            log.exception("check failed unexpectedly; denying with 503")
            outcome = _Outcome(unavailable())
        self._observe(pending.request, pending.inspection, outcome, pending.started)
        return outcome.decision

    async def check(self, request: RequestView) -> Decision:
        step = self.begin(request)
        return await self.finish(step) if isinstance(step, Pending) else step

    def check_now(self, request: RequestView) -> Decision | None:
        """``begin`` for callers that only want the no-I/O answer (None: ``check`` decides)."""
        step = self.begin(request)
        return None if isinstance(step, Pending) else step

    def _observe(self, request: RequestView, inspection: Inspection | None, outcome: _Outcome, started: float) -> None:
        if self._observer is None:
            return
        try:
            route = inspection.route.prefix if inspection is not None else None
            seconds = time.perf_counter() - started
            seen = Observation(outcome.decision, route, outcome.record, outcome.invalid, seconds)
            self._observer.observe(request, seen)
        except Exception:  # the answer matters more than its record
            log.exception("recording a decision failed")

    def _decided(
        self,
        request: RequestView,
        inspection: Inspection,
        record: SessionRecord | None,
        *,
        invalid: str | None = None,
        refused: str | None = None,
        store_failed: bool = False,
    ) -> _Outcome:
        extra: tuple[tuple[str, str], ...] = ()
        if record is not None and self._assertions is not None:
            context = dict(request.context) if request.context else _NO_CONTEXT
            token = self._assertions.issue(record, request.host, context, self._clock())
            if token is not None:
                extra = ((self._assertions.header, token),)
        invalid_reason = refused or ("session_invalid" if invalid else "session_required")
        decision = decide(
            self._settings,
            request,
            inspection,
            record,
            store_failed=store_failed,
            invalid_reason=invalid_reason,
            extra=extra,
        )
        return _Outcome(decision, record, invalid)

    def _decide_now(self, request: RequestView, inspection: Inspection) -> _Outcome | None:
        if not inspection.session_cookies:
            return self._decided(request, inspection, None)
        ring = self._keys.cached
        if ring is None or (self._cache is None and not self._refused):
            return None  # nothing here could answer: leave the MAC checks to the store path
        tokens = tokens_to_try(ring, inspection)
        if not tokens:
            return None  # maybe a new shared key: check() re-reads it
        now = self._clock()
        first_refused: str | None = None
        for token in tokens:  # header order, skipping what was refused just now, as the store path does
            key = session_key(token)
            refused = self._refused.reason(key, now)
            if refused is None:
                return self._cached(request, inspection, key, now)
            first_refused = first_refused or refused
        return self._decided(request, inspection, None, invalid="unknown", refused=first_refused)

    def _cached(self, request: RequestView, inspection: Inspection, key: SessionKey, now: float) -> _Outcome | None:
        """The decision for the first token still to try when the cache holds its live session; else None."""
        record = self._cache.get(key, now) if self._cache is not None else None
        if record is None or not is_live(record, now):
            return None
        return self._decided(request, inspection, record)

    async def _check(self, request: RequestView, inspection: Inspection) -> _Outcome:
        try:
            async with asyncio.timeout(self._deadline):
                ring = self._keys.cached or await self._keys.ring()
                tokens = tokens_to_try(ring, inspection)
                if not tokens and (fresh := await self._keys.refresh()) is not None:
                    tokens = tokens_to_try(fresh, inspection)
                if not tokens:
                    return self._decided(request, inspection, None, invalid="forged")
                resolved = await self._resolve(tokens)
        except (StoreError, TimeoutError) as exc:
            log.warning("session store failed: %s", exc or "deadline exceeded")
            stale = self._last_known(inspection)
            if stale is not None:
                outcome = self._decided(request, inspection, stale)
                if isinstance(outcome.decision, Allow):
                    return replace(outcome, decision=replace(outcome.decision, reason="stale"))
                return outcome
            return self._decided(request, inspection, None, store_failed=True)
        if resolved.record is not None:
            return self._decided(request, inspection, resolved.record)
        return self._decided(request, inspection, None, invalid="unknown", refused=resolved.refused)

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

    async def _resolve(self, tokens: tuple[str, ...]) -> _Resolved:
        """The first token, in header order, that names a live session (its read also refreshes last-seen); else
        why the first refused record was refused, if one was."""
        first_refused: str | None = None
        for token in tokens:
            key = session_key(token)
            found = await self._read(key)
            if isinstance(found, str):
                first_refused = first_refused or found
                continue
            now = self._clock()
            if found is not None and is_live(found, now):
                if self._cache is not None and self._cache.stale is not None:
                    self._cache.stale.remember(key, found, now)
                return _Resolved(found)
        return _Resolved(None, first_refused)

    async def _read(self, key: SessionKey) -> SessionRecord | str | None:
        """The record under ``key`` (None: there is none), or why it is refused, now or a moment ago."""
        refused = self._refused.reason(key, self._clock())
        if refused is not None:
            return refused
        try:
            return await self._store.resolve(key, self._clock())
        except CorruptRecord as exc:
            log.error("unusable session record %s…: %s", key.digest[:12], exc)
            refused = refusal_reason(exc)
            self._refused.refuse(key, refused, self._clock())
            return refused
