"""An in-memory SessionStore for unit tests of the core and the adapters (not for production: nothing shared)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from sidecar.core.session import SessionRecord, expires_at, needs_touch, touched
from sidecar.core.tokens import SessionKey
from sidecar.errors import StoreUnavailable


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._records: dict[SessionKey, SessionRecord] = {}
        self._users: dict[str, list[SessionKey]] = {}  # oldest first
        self._secret: str | None = None
        self.down = False  # lets tests of the callers simulate an outage

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("memory store marked down")

    def _live(self, key: SessionKey) -> SessionRecord | None:
        record = self._records.get(key)
        if record is not None and self._clock() >= expires_at(record):
            self._drop(key)
            return None
        return record

    def _drop(self, key: SessionKey) -> bool:
        record = self._records.pop(key, None)
        if record is None:
            return False
        keys = self._users.get(record.user_id, [])
        if key in keys:
            keys.remove(key)
        return True

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        self._check()
        record = self._live(key)
        if record is not None and needs_touch(record, now):
            self._records[key] = touched(record, now)
        return record

    async def get(self, key: SessionKey) -> SessionRecord | None:
        self._check()
        return self._live(key)

    async def create(self, key: SessionKey, record: SessionRecord, max_per_user: int = 0) -> int:
        self._check()
        existing = self._records.get(key)
        if existing is not None:
            if existing.session_id == record.session_id:
                return 0  # this very create, repeated
            raise StoreUnavailable("a session with this key already exists")
        self._records[key] = record
        keys = self._users.setdefault(record.user_id, [])
        for old in list(keys):
            self._live(old)
        keys.append(key)
        evicted = 0
        while max_per_user > 0 and len(keys) > max_per_user:
            self._drop(keys[0])
            evicted += 1
        return evicted

    async def rotate(self, old: SessionKey, new: SessionKey, record: SessionRecord, now: float) -> bool:
        self._check()
        if self._live(old) is None:
            moved = self._records.get(new)
            return moved is not None and moved.session_id == record.session_id  # this very rotation, repeated
        if new in self._records:
            return False
        self._drop(old)
        self._records[new] = replace(record, last_seen_at=now)
        self._users.setdefault(record.user_id, []).append(new)
        return True

    async def revoke(self, key: SessionKey) -> bool:
        self._check()
        return self._live(key) is not None and self._drop(key)

    async def revoke_session(self, user_id: str, session_id: str) -> bool:
        self._check()
        for key in list(self._users.get(user_id, [])):
            record = self._live(key)
            if record is not None and record.session_id == session_id:
                return self._drop(key)
        return False

    async def revoke_user(self, user_id: str) -> int:
        self._check()
        keys = self._users.pop(user_id, [])
        return sum(1 for key in keys if self._live(key) is not None and self._records.pop(key, None) is not None)

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        self._check()
        records = [self._live(key) for key in list(self._users.get(user_id, []))]
        return [record for record in records if record is not None]

    async def shared_secret(self, proposal: str) -> str:
        self._check()
        if self._secret is None:
            self._secret = proposal
        return self._secret

    async def ping(self) -> None:
        self._check()

    async def close(self) -> None:
        return None
