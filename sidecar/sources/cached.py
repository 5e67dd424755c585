"""A session source seen through this process's memory: the one way the request path reaches the cache.

``CachedSource`` wraps any source with three memories, all kept honest by the invalidation channel (it is the
channel's target: every published key is evicted from all three):

- the session cache (``SessionCache``, optional: ``cache.enabled``), served only while the channel is live;
- the refused-records memo: keys whose stored record was refused (corrupt, or over the size bounds), with the
  reason, for a few seconds, so a client repeating such a token costs neither a store read nor a decode each time;
- failure_policy stale (``StaleSessions``, optional): the last identity each key was confirmed as, remembered only
  while the channel is live, answered (``fallback``) when the store fails. A channel lost while the store still
  answers may have missed a revocation, so they are then forgotten; lost together with the store (nobody can
  revoke), they stay usable for ``redis.stale_for``. A re-subscription proves the store answers again and that
  something may have been published unseen: they are forgotten too.

``LocalEvictions`` is the write side: the SessionService on this replica writes through it, so its own revocations
and rotations leave this replica's memory at once, before the channel's message comes back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from sidecar.core.reasons import Reason
from sidecar.core.session import SessionRecord, is_live, needs_touch, touched
from sidecar.core.tokens import SessionKey
from sidecar.sources.base import Lookup, SessionSource
from sidecar.store.cache import LocalEvictions, SessionCache
from sidecar.store.stale import StaleSessions

log = logging.getLogger("sidecar.authz")

# Long enough that a client hammering one bad token costs one store read and decode per few seconds, short enough
# that nothing stale outlives a glance; bounded so planting many bad records cannot grow the memo.
REFUSED_FOR_SECONDS = 5.0
REFUSED_MAX_ENTRIES = 1024


class RefusedRecords:
    """Session keys whose stored record was refused, with the reason, for ``ttl`` seconds (LRU, bounded).

    Served whether or not the invalidation channel is live: a refusal stays right whatever was missed. A key's
    record is written once (a rotation moves the session to a new key, a touch changes only the plain last-seen
    field), so a refused record cannot turn valid under the same key; a missed revocation only turns a refused
    token into an unknown one. A revocation that is seen evicts the key all the same.
    """

    def __init__(self, *, ttl: float = REFUSED_FOR_SECONDS, max_entries: int = REFUSED_MAX_ENTRIES) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[SessionKey, Reason, float]] = OrderedDict()
        self._lock = threading.Lock()  # asked from gRPC handler threads, written on the event loop

    def refuse(self, key: SessionKey, reason: Reason, now: float) -> None:
        with self._lock:
            self._entries[key.digest] = (key, reason, now + self._ttl)
            self._entries.move_to_end(key.digest)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def reason(self, key: SessionKey, now: float) -> Reason | None:
        """Why ``key``'s record was refused, while that is remembered; else None."""
        if not self._entries:  # the common case, asked on every Check: no lock taken
            return None
        with self._lock:
            entry = self._entries.get(key.digest)
            if entry is None or entry[0] != key:
                return None
            if now >= entry[2]:
                del self._entries[key.digest]
                return None
            return entry[1]

    def invalidate(self, digests: Iterable[str]) -> None:
        with self._lock:
            for digest in digests:
                self._entries.pop(digest, None)

    def __len__(self) -> int:
        return len(self._entries)


class CachedSource:
    def __init__(
        self,
        inner: SessionSource,
        *,
        cache: SessionCache | None = None,
        stale: StaleSessions | None = None,
        refused: RefusedRecords | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.stale = stale
        self.refused = refused if refused is not None else RefusedRecords()
        self._clock = clock
        self.name = inner.name
        self.cookie_names = inner.cookie_names
        # The inner source's own: no call through this one on the request path.
        self.candidates_now = inner.candidates_now

    async def candidates(
        self, values: tuple[str, ...], at_hand: tuple[SessionKey, ...] | None
    ) -> tuple[SessionKey, ...]:
        return await self.inner.candidates(values, at_hand)

    def lookup_now(self, key: SessionKey, now: float) -> Lookup:
        refused = self.refused.reason(key, now)
        if refused is not None:
            return refused
        if self.cache is not None:
            record = self.cache.get(key, now, count_miss=False)  # ``lookup`` counts the miss, if it is one
            if record is not None and is_live(record, now):
                return record
        return self.inner.lookup_now(key, now)

    async def lookup(self, key: SessionKey, now: float) -> Lookup:
        refused = self.refused.reason(key, now)
        if refused is not None:
            return refused
        cache, epoch = self.cache, 0
        if cache is not None:
            record = cache.get(key, now)
            if record is not None and is_live(record, now):
                return record
            epoch = cache.epoch
        found = await self.inner.lookup(key, now)
        after = self._clock()
        if isinstance(found, Reason):
            self.refused.refuse(key, found, after)
        elif found is not None:
            if cache is not None:
                # What the store holds now: the read's touch (when one was due) moved last_seen to ``now``.
                cache.put(key, touched(found, now) if needs_touch(found, now) else found, now, epoch)
            if self.stale is not None:
                self.stale.remember(key, found, after)
        return found

    def fallback(self, key: SessionKey, now: float) -> SessionRecord | None:
        record = self.stale.recall(key, now) if self.stale is not None else None
        if record is None:
            return self.inner.fallback(key, now)
        log.info("store unavailable: answering session %s from its last known identity", record.session_id)
        return record

    # --- the invalidation channel's target (sidecar.store.invalidation) ---------------------------------------

    @property
    def live(self) -> bool:
        return self.cache is not None and self.cache.live

    def invalidate(self, digests: Iterable[str]) -> None:
        digests = tuple(digests)
        if self.cache is not None:
            self.cache.invalidate(digests)
        self.refused.invalidate(digests)
        if self.stale is not None:
            self.stale.invalidate(digests)

    def set_live(self, live: bool) -> None:
        """Connected (True) or lost (False) channel: the cache trusts nothing from before; last known identities
        are remembered only while it is connected, and kept (not forgotten) when it is lost."""
        if self.cache is not None:
            self.cache.set_live(live)
        if self.stale is not None:
            self.stale.trusted = live

    def resubscribed(self) -> None:
        if self.stale is not None:
            self.stale.clear()

    def holds_last_known(self) -> bool:
        return self.stale is not None and len(self.stale) > 0

    def forget_last_known(self) -> None:
        """The store answers while the channel is lost: a revocation may be going unseen."""
        if self.stale is not None:
            self.stale.clear()


__all__ = ["REFUSED_FOR_SECONDS", "CachedSource", "LocalEvictions", "RefusedRecords"]
