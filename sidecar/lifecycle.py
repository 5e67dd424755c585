"""Session lifecycle on top of a store: issue, read, rotate, revoke and list.

Used by the CLI and by the SessionService API (``sidecar.api.servicer``); the request path never imports it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from sidecar.core.session import KEEP, SessionRecord, is_live, new_session, validate_identity
from sidecar.core.set_cookie import set_cookie_header
from sidecar.core.tokens import ENTROPY_BYTES, SessionKey, is_well_formed, mint_token, session_key, user_tag
from sidecar.errors import BadInput
from sidecar.keyring import KeyRingSource
from sidecar.store.base import SessionStore


@dataclass(frozen=True, slots=True)
class IssuedSession:
    token: str
    record: SessionRecord
    set_cookie: str


class SessionManager:
    """Issue, read, rotate and revoke sessions: what the CLI and the SessionService API both call."""

    def __init__(
        self,
        store: SessionStore,
        keys: KeyRingSource,
        *,
        cookie_name: str,
        idle_timeout: float,
        absolute_timeout: float,
        max_per_user: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._keys = keys
        self._cookie_name = cookie_name
        self._idle_timeout = idle_timeout
        self._absolute_timeout = absolute_timeout
        self._max_per_user = max_per_user
        self._clock = clock

    async def _mint(self, user_id: str) -> tuple[str, SessionKey]:
        ring = await self._keys.ring()
        token = mint_token(ring, secrets.token_bytes(ENTROPY_BYTES), user_tag(user_id))
        return token, session_key(token)

    def _issued(self, token: str, record: SessionRecord, now: float) -> IssuedSession:
        max_age = record.absolute_expires_at - now
        return IssuedSession(token, record, set_cookie_header(self._cookie_name, token, max_age))

    async def create(
        self,
        user_id: str,
        *,
        email: str | None = None,
        roles: tuple[str, ...] = (),
        attributes: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        absolute_timeout: float | None = None,
    ) -> IssuedSession:
        now = self._clock()
        try:
            record = new_session(
                session_id=secrets.token_urlsafe(12),
                user_id=user_id,
                email=email,
                roles=roles,
                attributes=attributes or {},
                idle_timeout=idle_timeout if idle_timeout is not None else self._idle_timeout,
                absolute_timeout=absolute_timeout if absolute_timeout is not None else self._absolute_timeout,
                now=now,
            )
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        token, key = await self._mint(user_id)
        await self._store.create(key, record, self._max_per_user)
        return self._issued(token, record, now)

    def _key_of(self, token: str) -> SessionKey:
        if not is_well_formed(token):
            raise BadInput("token: not a session token of this sidecar (malformed)")
        return session_key(token)

    async def get(self, token: str) -> SessionRecord | None:
        """The live session of ``token`` (not touched), or None."""
        record = await self._store.get(self._key_of(token))
        return record if record is not None and is_live(record, self._clock()) else None

    async def rotate(
        self,
        token: str,
        *,
        email: str | None = KEEP,
        roles: tuple[str, ...] = KEEP,
        attributes: Mapping[str, str] = KEEP,
    ) -> IssuedSession | None:
        """A new token for the same session (optionally with a changed identity); the old token is dead at once.

        None when the old token has no live session. Use it after login and after any privilege change, so a
        token planted or observed before cannot ride on the new rights.
        """
        old_key = self._key_of(token)
        record = await self._store.get(old_key)
        now = self._clock()
        if record is None or not is_live(record, now):
            return None
        changed = replace(
            record,
            email=record.email if email is KEEP else email,
            roles=record.roles if roles is KEEP else tuple(dict.fromkeys(roles)),
            attributes=record.attributes if attributes is KEEP else dict(attributes),
            last_seen_at=now,
        )
        problems = validate_identity(changed.user_id, changed.email, changed.roles, changed.attributes)
        if problems:
            raise BadInput("; ".join(problems))
        new_token, new_key = await self._mint(record.user_id)
        if not await self._store.rotate(old_key, new_key, changed, now):
            return None
        return self._issued(new_token, changed, now)

    async def revoke(self, token: str) -> bool:
        return await self._store.revoke(self._key_of(token))

    async def revoke_session(self, user_id: str, session_id: str) -> bool:
        _require("user id", user_id)
        _require("session id", session_id)
        return await self._store.revoke_session(user_id, session_id)

    async def revoke_user(self, user_id: str) -> int:
        _require("user id", user_id)
        return await self._store.revoke_user(user_id)

    async def list(self, user_id: str) -> list[SessionRecord]:
        _require("user id", user_id)
        now = self._clock()
        records = await self._store.list_user(user_id)
        return sorted((r for r in records if is_live(r, now)), key=lambda r: r.created_at)


def _require(what: str, value: str) -> None:
    if not value:
        raise BadInput(f"{what}: must not be empty")
