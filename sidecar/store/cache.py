"""A per-process session cache in front of the store, kept honest by push invalidation.

Entries are bounded in count and bytes (LRU), live at most ``ttl``, never past the session's own expiry, and
never past the moment its last-seen time is due for a refresh (so the idle timer still moves in the store).
Lookups come from gRPC handler threads as well as the event loop, writes and invalidations from the loop: one
lock makes each operation whole, so a lookup that begins after an invalidation returned never sees its entry.
The cache serves hits only while the invalidation channel is connected: revoke, rotate and revoke-user are
published by the store's scripts and evict entries on every replica; a lost channel flushes the cache and
turns it off until it is back. An epoch counter keeps a read that raced an invalidation from being cached.

The request path reaches the cache one way: through the source decorator ``sidecar.sources.cached.CachedSource``,
which also keeps the refused-records memo and the last known identities of failure_policy stale. ``CachingStore``
below is the same cache seen as a SessionStore; only the store contract suite's cached variants still use it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sidecar.core.session import SessionRecord, expires_at, needs_touch, touch_interval, touched
from sidecar.core.tokens import SessionKey
from sidecar.store.base import SessionStore

ENTRY_OVERHEAD_BYTES = 400  # the key, the record object, the LRU links: measured roughly with tracemalloc


def record_size(record: SessionRecord) -> int:
    identity = len(record.user_id) + len(record.email or "") + sum(len(r) for r in record.roles)
    attributes = sum(len(k) + len(v) for k, v in record.attributes.items())
    return ENTRY_OVERHEAD_BYTES + identity + attributes + len(record.session_id)


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    invalidations: int
    entries: int
    bytes: int
    flushes: int = 0  # whole-cache drops: the invalidation channel was lost or re-established


class SessionCache:
    def __init__(self, *, ttl: float, max_entries: int, max_bytes: int) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[SessionKey, SessionRecord, float, int]] = OrderedDict()
        self._bytes = 0
        self.epoch = 0
        self.live = False  # serving hits only while the invalidation channel is connected
        self.hits = self.misses = self.invalidations = self.flushes = 0
        self._lock = threading.Lock()

    def get(self, key: SessionKey, now: float, *, count_miss: bool = True) -> SessionRecord | None:
        """The cached record, or None. ``count_miss=False``: a glance before deciding whether to read the store;
        the read's own ``get`` counts the miss, so a Check counts one lookup however often it glanced."""
        if not self.live:
            return None
        with self._lock:
            entry = self._entries.get(key.digest)
            if entry is None or entry[0] != key:
                self.misses += count_miss
                return None
            _, record, until, _ = entry
            if now >= until or needs_touch(record, now):
                self._drop(key.digest)
                self.misses += count_miss
                return None
            self._entries.move_to_end(key.digest)
            self.hits += 1
            return record

    def put(self, key: SessionKey, record: SessionRecord, now: float, epoch: int) -> None:
        """Cache a record read at ``epoch``; skipped when an invalidation arrived since (the read may be stale)."""
        next_touch = record.last_seen_at + touch_interval(record)
        until = min(now + self._ttl, expires_at(record), next_touch)
        if until <= now:
            return
        size = record_size(record)
        with self._lock:
            if not self.live or epoch != self.epoch:
                return
            self._drop(key.digest)
            self._entries[key.digest] = (key, record, until, size)
            self._bytes += size
            while self._entries and (len(self._entries) > self._max_entries or self._bytes > self._max_bytes):
                oldest = next(iter(self._entries))
                self._drop(oldest)

    def _drop(self, digest: str) -> None:
        entry = self._entries.pop(digest, None)
        if entry is not None:
            self._bytes -= entry[3]

    def invalidate(self, digests: Iterable[str]) -> None:
        with self._lock:
            self.epoch += 1
            for digest in digests:
                self.invalidations += 1
                self._drop(digest)

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self.epoch += 1
        self.flushes += 1
        self._entries.clear()
        self._bytes = 0

    def set_live(self, live: bool) -> None:
        """Connected (True) or lost (False) invalidation channel: either way nothing cached before is trusted."""
        with self._lock:
            self._flush()
            self.live = live

    def stats(self) -> CacheStats:
        with self._lock:
            entries, size = len(self._entries), self._bytes
        return CacheStats(self.hits, self.misses, self.invalidations, entries, size, self.flushes)


class LocalEvictions:
    """A SessionStore whose revocations and rotations also evict the key from ``evict``'s memory at once."""

    def __init__(self, inner: SessionStore, evict: Callable[[Iterable[str]], None]) -> None:
        self.inner = inner
        self._evict = evict

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        return await self.inner.resolve(key, now)

    async def get(self, key: SessionKey) -> SessionRecord | None:
        return await self.inner.get(key)

    async def create(self, key: SessionKey, record: SessionRecord, max_per_user: int = 0) -> int:
        return await self.inner.create(key, record, max_per_user)

    async def rotate(self, old: SessionKey, new: SessionKey, record: SessionRecord, now: float) -> bool:
        self._evict((old.digest,))
        return await self.inner.rotate(old, new, record, now)

    async def revoke(self, key: SessionKey) -> bool:
        self._evict((key.digest,))
        return await self.inner.revoke(key)

    async def revoke_session(self, user_id: str, session_id: str) -> bool:
        return await self.inner.revoke_session(user_id, session_id)

    async def revoke_user(self, user_id: str) -> int:
        return await self.inner.revoke_user(user_id)

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        return await self.inner.list_user(user_id)

    async def shared_secret(self, proposal: str) -> str:
        return await self.inner.shared_secret(proposal)

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


class CachingStore(LocalEvictions):
    """A SessionStore that answers reads from a SessionCache when it can (its writes evict like LocalEvictions)."""

    def __init__(self, inner: SessionStore, cache: SessionCache, clock: Callable[[], float] = time.time) -> None:
        super().__init__(inner, cache.invalidate)
        self.cache = cache
        self._clock = clock

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        record = self.cache.get(key, now)
        if record is not None:
            return record
        epoch = self.cache.epoch
        record = await self.inner.resolve(key, now)
        if record is not None:
            # What the store holds now: the touch (if one was due) moved last_seen to ``now``.
            fresh = touched(record, now) if needs_touch(record, now) else record
            self.cache.put(key, fresh, now, epoch)
        return record
