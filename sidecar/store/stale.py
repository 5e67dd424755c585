"""Last known identities for ``redis.failure_policy: stale``: serve a session through a store outage, briefly.

An identity is remembered only while the invalidation channel is verifiably live, so every revocation up to
then has reached this process; revocations evict it like a cache entry. When the channel is lost while the store
still answers (a revocation could be published unseen), everything is forgotten; when both go together (the
store is down: nobody can revoke), the entries stay usable for ``max_age`` after their last confirmation, and
never past the session's own expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from sidecar.core.session import SessionRecord, is_live
from sidecar.core.tokens import SessionKey


class StaleSessions:
    def __init__(self, *, max_age: float, max_entries: int) -> None:
        self._max_age = max_age
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[SessionKey, SessionRecord, float]] = OrderedDict()
        self.trusted = False
        self.served = 0

    def remember(self, key: SessionKey, record: SessionRecord, now: float) -> None:
        if not self.trusted:
            return
        self._entries[key.digest] = (key, record, now)
        self._entries.move_to_end(key.digest)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def recall(self, key: SessionKey, now: float) -> SessionRecord | None:
        entry = self._entries.get(key.digest)
        if entry is None or entry[0] != key:
            return None
        _, record, confirmed_at = entry
        if now - confirmed_at > self._max_age or not is_live(record, now):
            del self._entries[key.digest]
            return None
        self.served += 1
        return record

    def invalidate(self, digests: Iterable[str]) -> None:
        for digest in digests:
            self._entries.pop(digest, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
