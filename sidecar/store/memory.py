"""An in-memory SessionStore for unit tests of the core and the adapters (not for production: nothing shared)."""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.core.session import SessionRecord
from sidecar.errors import StoreUnavailable


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: dict[str, tuple[SessionRecord, float]] = {}
        self._users: dict[str, set[str]] = {}
        self._secret: str | None = None
        self.down = False  # lets tests of the callers simulate an outage

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("memory store marked down")

    def _live(self, key: str) -> SessionRecord | None:
        entry = self._records.get(key)
        if entry is None:
            return None
        record, deadline = entry
        if self._clock() >= deadline:
            del self._records[key]
            return None
        return record

    async def get(self, key: str) -> SessionRecord | None:
        self._check()
        return self._live(key)

    async def create(self, key: str, record: SessionRecord, ttl_ms: int) -> None:
        self._check()
        self._records[key] = (record, self._clock() + ttl_ms / 1000)
        self._users.setdefault(record.user_id, set()).add(key)

    async def touch(self, key: str, record: SessionRecord, ttl_ms: int) -> bool:
        self._check()
        if self._live(key) is None:
            return False
        self._records[key] = (record, self._clock() + ttl_ms / 1000)
        return True

    async def revoke(self, key: str) -> bool:
        self._check()
        record = self._live(key)
        if record is None:
            return False
        del self._records[key]
        self._users.get(record.user_id, set()).discard(key)
        return True

    async def revoke_user(self, user_id: str) -> int:
        self._check()
        keys = self._users.pop(user_id, set())
        count = 0
        for key in keys:
            if self._live(key) is not None:
                del self._records[key]
                count += 1
        return count

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        self._check()
        keys = self._users.get(user_id, set())
        records = []
        for key in sorted(keys):
            record = self._live(key)
            if record is None:
                keys.discard(key)
            else:
                records.append(record)
        return records

    async def shared_secret(self, proposal: str) -> str:
        self._check()
        if self._secret is None:
            self._secret = proposal
        return self._secret

    async def ping(self) -> None:
        self._check()

    async def close(self) -> None:
        return None
