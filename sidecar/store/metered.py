"""A SessionStore that times every operation of the store it wraps and counts its failures, for ``/metrics``.

It sits directly on the Redis store (under the cache), so it measures real round trips: a cache hit costs nothing
here. A call cancelled by the request deadline is counted as a ``timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from prometheus_client import Histogram

from sidecar.core.session import SessionRecord
from sidecar.core.tokens import SessionKey
from sidecar.errors import CorruptRecord, StoreError, StoreTimeout
from sidecar.metrics import Metrics
from sidecar.store.base import SessionStore

T = TypeVar("T")
# Every operation of the SessionStore interface (close has no round trip worth timing).
OPERATIONS = [
    "resolve",
    "get",
    "create",
    "rotate",
    "revoke",
    "revoke_session",
    "revoke_user",
    "list_user",
    "shared_secret",
    "ping",
]


def error_label(exc: BaseException) -> str:
    if isinstance(exc, StoreTimeout | TimeoutError | asyncio.CancelledError):
        return "timeout"
    if isinstance(exc, CorruptRecord):
        return "corrupt"
    if isinstance(exc, StoreError):
        return "unavailable"
    return "other"


class MeteredStore:
    def __init__(self, inner: SessionStore, metrics: Metrics) -> None:
        self.inner = inner
        self._metrics = metrics
        self._timers: dict[str, Histogram] = {op: metrics.store_seconds.labels(op) for op in OPERATIONS}

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await call
        except BaseException as exc:
            self._metrics.store_errors.labels(operation, error_label(exc)).inc()
            raise
        finally:
            self._timers[operation].observe(time.perf_counter() - started)

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        return await self._timed("resolve", self.inner.resolve(key, now))

    async def get(self, key: SessionKey) -> SessionRecord | None:
        return await self._timed("get", self.inner.get(key))

    async def create(self, key: SessionKey, record: SessionRecord, max_per_user: int = 0) -> int:
        return await self._timed("create", self.inner.create(key, record, max_per_user))

    async def rotate(self, old: SessionKey, new: SessionKey, record: SessionRecord, now: float) -> bool:
        return await self._timed("rotate", self.inner.rotate(old, new, record, now))

    async def revoke(self, key: SessionKey) -> bool:
        return await self._timed("revoke", self.inner.revoke(key))

    async def revoke_session(self, user_id: str, session_id: str) -> bool:
        return await self._timed("revoke_session", self.inner.revoke_session(user_id, session_id))

    async def revoke_user(self, user_id: str) -> int:
        return await self._timed("revoke_user", self.inner.revoke_user(user_id))

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        return await self._timed("list_user", self.inner.list_user(user_id))

    async def shared_secret(self, proposal: str) -> str:
        return await self._timed("shared_secret", self.inner.shared_secret(proposal))

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def close(self) -> None:
        await self.inner.close()
