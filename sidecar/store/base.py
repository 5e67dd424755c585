"""The one narrow interface every session store implements.

Sessions are addressed by ``SessionKey`` (the user's tag and the token's hash), never by the token. Every method
may raise ``StoreUnavailable`` or ``StoreTimeout``; reads raise ``CorruptRecord`` when stored data does not decode
or open. A write that raises ``StoreTimeout`` may or may not have taken effect (its message says so); every write
is safe to repeat. The same contract suite (tests/contract) runs against every implementation.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.core.session import SessionRecord
from sidecar.core.tokens import SessionKey


class SessionStore(Protocol):
    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        """The request path's read: the record as it was (None when absent), refreshing its last-seen time and
        TTL when ``needs_touch`` says so, in one round trip. Liveness is the caller's call (``is_live``)."""
        ...

    async def get(self, key: SessionKey) -> SessionRecord | None:
        """The record under ``key`` without touching it, or None."""
        ...

    async def create(self, key: SessionKey, record: SessionRecord, max_per_user: int = 0) -> int:
        """Store a new record and index it under its user, atomically; when ``max_per_user`` > 0 and the user now
        has more sessions, the oldest are revoked (a Redis store revokes a small fixed batch per call, so a user far
        over a newly lowered cap comes down to it over the next creates). Returns how many were evicted.

        Repeating the call (same key and record, e.g. after a StoreTimeout) creates nothing more and succeeds."""
        ...

    async def rotate(self, old: SessionKey, new: SessionKey, record: SessionRecord, now: float) -> bool:
        """Move a live session to a new key (a new token) with ``record`` as its content, atomically: the old key
        is gone the moment the new one exists. False (nothing written) when the old session is gone. Repeating a
        rotation that took effect (e.g. after a StoreTimeout) answers True again."""
        ...

    async def revoke(self, key: SessionKey) -> bool:
        """Delete the session under ``key`` (and its index entry); True when one existed."""
        ...

    async def revoke_session(self, user_id: str, session_id: str) -> bool:
        """Delete the user's session with this non-secret handle; True when one existed."""
        ...

    async def revoke_user(self, user_id: str) -> int:
        """Delete every session of ``user_id``; the number deleted. Every session that existed when the call began
        is gone when it returns (a Redis store deletes them in bounded batches, oldest first, so one created
        meanwhile may go too)."""
        ...

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        """The user's sessions still in the store, oldest first (to the millisecond of creation); dead index
        entries are pruned on the way."""
        ...

    async def shared_secret(self, proposal: str) -> str:
        """The deployment-wide token key when none is configured: ``proposal`` if none existed yet, else it."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
