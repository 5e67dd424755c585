"""The authorization service: the core's decision plus the I/O it needs, asked of an ordered list of sources.

Protocol adapters (gRPC v3, HTTP) translate into ``RequestView`` and out of ``Decision``; nothing here knows
about Envoy, nor about any token or record format (the sources do: ``sidecar.sources``). A Check walks:
``inspect`` (route, session cookies) → each source's candidates, in source order → their lookups, in header order
→ ``Found`` → ``decide``. What the process can answer from memory is answered in ``begin``, without scheduling
anything; the rest in ``finish``, reusing what ``begin`` worked out (candidates are verified once per Check).

``check`` never raises: any failure of a store, its deadline or this code becomes a Deny (503), because an
exception would surface as a gRPC error that ``failure_mode_allow`` could turn into an allow. Every decision,
from either entry point, is reported once to the observer (metrics and the decision log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from sidecar.authz.observer import DecisionObserver
from sidecar.core.decision import NO_SESSION, Decision, EdgeSettings, Found, Inspection, decide, inspect, unavailable
from sidecar.core.reasons import RULES, Reason
from sidecar.core.request import RequestView
from sidecar.core.session import SessionRecord
from sidecar.core.tokens import SessionKey
from sidecar.errors import StoreError
from sidecar.keyring import KeyRingSource
from sidecar.sources.base import MAX_CANDIDATES, SessionSource
from sidecar.sources.cached import CachedSource
from sidecar.sources.native import NativeSource
from sidecar.store.base import SessionStore

log = logging.getLogger("sidecar.authz")
_NO_CONTEXT: Mapping[str, str] = MappingProxyType({})  # most routes set no context_extensions: no dict per allow

# The candidates of each source, in source order, as far as ``begin`` got (None: the source could not tell yet).
AtHand = tuple[tuple[SessionKey, ...] | None, ...]


class IdentityAssertions(Protocol):
    """Signs the identity of an allowed session for the upstream (``authz.assertion_issuer.AssertionIssuer``)."""

    @property
    def header(self) -> str: ...

    def issue(self, record: SessionRecord, host: str, context: Mapping[str, str], now: float) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Pending:
    """A check that needs I/O: what ``begin`` already worked out, for ``finish``."""

    request: RequestView
    inspection: Inspection
    started: float  # perf_counter() at arrival, so the latency covers both halves
    at_hand: AtHand = ()


@dataclass(slots=True)
class _Progress:
    """Where a lookup is: the source asked and the candidate read (before its candidates are known: the first
    one ``begin`` verified, if any). A store failure falls back on exactly that candidate."""

    source: SessionSource | None = None
    key: SessionKey | None = None

    def at(self, source: SessionSource, key: SessionKey | None) -> None:
        self.source, self.key = source, key


@dataclass(frozen=True, slots=True)
class _NeedsIO:
    """``begin`` cannot answer from memory: the candidates it verified on the way."""

    at_hand: AtHand


class AuthzService:
    def __init__(
        self,
        settings: EdgeSettings,
        store: SessionStore | None = None,
        keys: KeyRingSource | None = None,
        *,
        sources: Sequence[SessionSource] = (),
        deadline: float,
        clock: Callable[[], float] = time.time,
        observer: DecisionObserver | None = None,
        assertions: IdentityAssertions | None = None,
    ) -> None:
        """``sources``: asked in order. ``store`` and ``keys`` instead: the native source alone over them, with
        the refused-records memo and no cache (what the adapters' tests and simple embeddings want)."""
        if store is not None and keys is not None:
            native = NativeSource(store, keys, settings.cookie_name)
            sources = (*sources, CachedSource(native, clock=clock))
        if not sources:
            raise ValueError("an authorization service needs at least one session source")
        unread = [name for source in sources for name in source.cookie_names if name not in settings.cookie_names]
        if unread:
            raise ValueError(f"session cookies {', '.join(unread)} are not among the settings' cookie_names")
        self._settings = settings
        self._sources = tuple(sources)
        # One source reads every session cookie: its values need no filtering by name.
        self._one_source = len(self._sources) == 1
        self._deadline = deadline
        self._clock = clock
        self._observer = observer
        self._assertions = assertions

    @property
    def sources(self) -> tuple[SessionSource, ...]:
        return self._sources

    def begin(self, request: RequestView) -> Decision | Pending:
        """The decision when it needs no I/O (no session cookie, a cached session, a refused record), so an
        adapter can answer without scheduling anything; else a ``Pending`` check for ``finish``."""
        started = time.perf_counter()
        inspection: Inspection | None = None
        try:
            inspection = inspect(self._settings, request)
            found = self._found_now(inspection)
        except Exception:
            log.exception("check failed unexpectedly; denying with 503")
            return self._answer(request, inspection, None, started)
        if isinstance(found, _NeedsIO):
            return Pending(request, inspection, started, found.at_hand)
        return self._answer(request, inspection, found, started)

    async def finish(self, pending: Pending) -> Decision:
        """The decision of a check ``begin`` could not make alone: the sources read their stores."""
        try:
            found = await self._found(pending.inspection, pending.at_hand)
        except Exception:
            log.exception("check failed unexpectedly; denying with 503")
            return self._answer(pending.request, pending.inspection, None, pending.started)
        return self._answer(pending.request, pending.inspection, found, pending.started)

    async def check(self, request: RequestView) -> Decision:
        step = self.begin(request)
        return await self.finish(step) if isinstance(step, Pending) else step

    def check_now(self, request: RequestView) -> Decision | None:
        """``begin`` for callers that only want the no-I/O answer (None: ``check`` decides)."""
        step = self.begin(request)
        return None if isinstance(step, Pending) else step

    def _found_now(self, inspection: Inspection) -> Found | _NeedsIO:
        """What the sources know without I/O, or ``_NeedsIO`` as soon as one needs a read (a later source must not
        answer for a cookie an earlier one may still resolve)."""
        if not inspection.session_cookies:
            return NO_SESSION
        now = self._clock()
        at_hand: list[tuple[SessionKey, ...] | None] = []
        refused: Reason | None = None
        tried = 0
        for source in self._sources:
            values = inspection.session_cookies if self._one_source else inspection.values(source.cookie_names)
            keys = source.candidates_now(values) if values else ()
            at_hand.append(keys)
            if values and not keys:
                return _NeedsIO(tuple(at_hand))  # not verified yet, or maybe under a key ring read since
            for key in keys or ():
                if tried == MAX_CANDIDATES:
                    break
                tried += 1
                known = source.lookup_now(key, now)
                if known is None:
                    return _NeedsIO(tuple(at_hand))
                if isinstance(known, Reason):
                    refused = refused or known
                    continue
                return Found(Reason.SESSION, known, source.name)
        return Found(refused or Reason.UNKNOWN)

    async def _found(self, inspection: Inspection, at_hand: AtHand) -> Found:
        progress = _Progress()
        try:
            async with asyncio.timeout(self._deadline):
                return await self._look_up(inspection, at_hand, progress)
        except (StoreError, TimeoutError) as exc:
            log.warning("session store failed: %s", exc or "deadline exceeded")
            return self._fallback(progress)

    async def _look_up(self, inspection: Inspection, at_hand: AtHand, progress: _Progress) -> Found:
        """The first candidate, sources in order and each in header order, that names a live session; else why
        none did (the first refusal, if a record was refused). ``progress`` follows the source and candidate being
        read, for the failure policy."""
        refused: Reason | None = None
        looked_up = 0
        any_keys = False
        for index, source in enumerate(self._sources):
            values = inspection.session_cookies if self._one_source else inspection.values(source.cookie_names)
            if not values:
                continue
            known = at_hand[index] if index < len(at_hand) else None
            progress.at(source, known[0] if known else None)
            keys = await source.candidates(values, known)
            any_keys = any_keys or bool(keys)
            for key in keys:
                if looked_up == MAX_CANDIDATES:
                    break
                looked_up += 1
                progress.at(source, key)
                found = await source.lookup(key, self._clock())
                self._read(source.name, found)
                if isinstance(found, Reason):
                    refused = refused or found
                elif found is not None:
                    return Found(Reason.SESSION, found, source.name)
        if not any_keys:
            return Found(Reason.FORGED)
        return Found(refused or Reason.UNKNOWN)

    def _fallback(self, progress: _Progress) -> Found:
        """The store failed while ``progress`` was being read: that candidate's source may still know its identity
        (failure_policy stale). Never another candidate's: an earlier one was just answered by its store."""
        if progress.source is None or progress.key is None:
            return Found(Reason.STORE_UNAVAILABLE)
        record = progress.source.fallback(progress.key, self._clock())
        if record is None:
            return Found(Reason.STORE_UNAVAILABLE)
        return Found(Reason.STALE, record, progress.source.name)

    def _answer(
        self, request: RequestView, inspection: Inspection | None, found: Found | None, started: float
    ) -> Decision:
        """The decision for what the lookup found (None: this code failed, a 503), reported to the observer."""
        decision: Decision
        try:
            if inspection is None or found is None:
                decision = unavailable()
            else:
                extra = self._assertion(request, found) if self._assertions is not None else ()
                decision = decide(self._settings, request, inspection, found, extra)
        except Exception:
            log.exception("check failed unexpectedly; denying with 503")
            decision, found = unavailable(), None
        observer = self._observer
        if observer is not None:
            try:
                seconds = time.perf_counter() - started
                route = inspection.route.prefix if inspection is not None else None
                if found is None:
                    record, invalid, origin = None, None, ""
                else:
                    record, invalid, origin = found.record, RULES[found.reason].invalid, found.source
                # No Observation built unless a log line is written (the observer's hot path, issue #14).
                observer.decided(
                    request, decision, seconds, route=route, record=record, invalid=invalid, session_source=origin
                )
            except Exception:  # the answer matters more than its record
                log.exception("recording a decision failed")
        return decision

    def _read(self, source: str, found: object) -> None:
        """Count one read of a source's store by what it found (sidecar_source_reads_total)."""
        if self._observer is not None:
            outcome = "refused" if isinstance(found, Reason) else "absent" if found is None else "session"
            self._observer.source_read(source, outcome)

    def _assertion(self, request: RequestView, found: Found) -> tuple[tuple[str, str], ...]:
        if found.record is None or self._assertions is None:
            return ()
        context = dict(request.context) if request.context else _NO_CONTEXT
        token = self._assertions.issue(found.record, request.host, context, self._clock())
        return ((self._assertions.header, token),) if token is not None else ()
