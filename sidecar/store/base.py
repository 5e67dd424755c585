"""The one narrow interface every session store implements.

Keys are token hashes (``sidecar.core.tokens.token_key``), never tokens. Every method may raise
``StoreUnavailable`` or ``StoreTimeout``; ``get`` raises ``CorruptRecord`` when stored data does not decode.
The same contract suite (tests/contract) runs against every implementation.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.core.session import SessionRecord


class SessionStore(Protocol):
    async def get(self, key: str) -> SessionRecord | None:
        """The record under ``key``, or None when there is none (never created, expired or revoked)."""
        ...

    async def create(self, key: str, record: SessionRecord, ttl_ms: int) -> None:
        """Store a new record for ``ttl_ms`` and index it under its user (for list and revoke-user)."""
        ...

    async def touch(self, key: str, record: SessionRecord, ttl_ms: int) -> bool:
        """Replace an existing record and its TTL; False (and nothing written) when it is gone.

        Only-if-present is what keeps a touch racing a revocation from bringing the session back.
        """
        ...

    async def revoke(self, key: str) -> bool:
        """Delete the record under ``key``; True when one existed."""
        ...

    async def revoke_user(self, user_id: str) -> int:
        """Delete every session of ``user_id``; the number deleted."""
        ...

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        """The user's sessions still in the store (expired ones are pruned from the index as a side effect)."""
        ...

    async def shared_secret(self, proposal: str) -> str:
        """The deployment-wide token key when none is configured: ``proposal`` if none existed yet, else it."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
