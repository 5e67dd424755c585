"""Sessions another framework keeps in Redis under one key per session (express, django, flask, php, rails).

A kind (``sidecar.sources.kinds``) says how a cookie value becomes the framework's session id (a signature is
verified and the id's format checked here, with no I/O: what cannot be valid never costs a read), under which key
the framework stores that session, and how its bytes decode (a whitelisted subset, ``sources.formats``). This
module does the rest, the same for every kind: one bounded read per candidate (``RedisReader``), the identity at the
configured paths, and an expiry that is the key's own time to live, which is how these frameworks expire sessions.

These sources are not cached: the application deletes or expires its keys without telling anyone, so every
request reads Redis, and a logout or expiry is denied on the very next request on every replica.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.core.reasons import Reason
from sidecar.core.session import RecordTooLarge, SessionRecord
from sidecar.core.tokens import SessionKey
from sidecar.errors import CorruptRecord
from sidecar.sources.base import MAX_CANDIDATES, Lookup, examined
from sidecar.sources.paths import Identity, Paths, identity
from sidecar.sources.redis_reader import RedisReader

log = logging.getLogger("sidecar.authz")

# A key with no time to live never expires in Redis; the sidecar rechecks it on every request all the same, and
# says it holds for this long (what the decision log and the assertion's expiry show).
NO_EXPIRY_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class FrameworkKey(SessionKey):
    """A candidate of a framework source: where its session is stored (``store_key``, which names the secret
    session id: never logged; ``digest`` is the handle logs, metrics and the x-session-id header show)."""

    store_key: str = ""


@dataclass(frozen=True, slots=True)
class Defaults:
    """What a kind's config entry defaults to, and which keys apply to it (the framework's own defaults)."""

    cookie: str
    key_prefix: str
    serializers: tuple[str, ...]  # the first is the default; () when the kind has one format
    signed: str  # "required" (secrets_file must be given), "optional" (verified when given) or "never"
    paths: Paths


@dataclass(frozen=True, slots=True)
class Settings:
    """One configured source, validated (``config.models.sources`` builds it)."""

    cookie: str
    key_prefix: str
    serializer: str
    secrets: tuple[bytes, ...] = field(repr=False)
    paths: Paths


@dataclass(frozen=True, slots=True)
class Kind:
    """What differs between frameworks that keep one key per session."""

    name: str
    session_id: Callable[[str], str | None]  # a cookie value -> the session id, or None when it cannot be one
    store_key: Callable[[str], str]  # a session id -> its Redis key
    decode: Callable[[bytes], object]  # the stored bytes -> the session (raises formats.Refused)
    paths: Paths


def handle(kind: str, session_id: str) -> str:
    """The non-secret name of a framework session: what logs and x-session-id show instead of its id."""
    return hashlib.sha256(f"{kind}:{session_id}".encode("utf-8", "surrogateescape")).hexdigest()


def refusal(error: CorruptRecord) -> Reason:
    return Reason.RECORD_TOO_LARGE if isinstance(error, RecordTooLarge) else Reason.RECORD_CORRUPT


def record_of(found: Identity, session_handle: str, now: float, lifetime: float) -> SessionRecord:
    """The identity as the rest of the sidecar sees a session: seen now, held for ``lifetime`` seconds."""
    return SessionRecord(
        session_id=session_handle[:32],
        user_id=found.user_id,
        email=found.email,
        roles=found.roles,
        created_at=now,
        last_seen_at=now,
        idle_timeout=lifetime,
        absolute_expires_at=now + lifetime,
    )


class UncachedSource(abc.ABC):
    """What every source of another framework's sessions shares: candidates from at most MAX_CANDIDATES of the
    examined cookie values, no answer without a read, a refused record logged and answered as such, the identity
    as a record that lives as long as the session, and nothing to fall back on (they are never cached).

    A subclass says how a cookie value becomes a candidate (``_candidate``, no I/O) and what the store holds under
    it (``_resolve``: the identity and how many seconds it lives, or None; raises CorruptRecord or StoreError)."""

    name: str
    cookie_names: tuple[str, ...]

    @abc.abstractmethod
    def _candidate(self, value: str) -> FrameworkKey | None: ...

    @abc.abstractmethod
    async def _resolve(self, key: FrameworkKey, now: float) -> tuple[Identity, float] | None: ...

    def candidates_now(self, values: tuple[str, ...]) -> tuple[SessionKey, ...]:
        keys: list[SessionKey] = []
        for value in examined(values):
            if (key := self._candidate(value)) is not None:
                keys.append(key)
                if len(keys) == MAX_CANDIDATES:
                    break
        return tuple(keys)

    async def candidates(
        self, values: tuple[str, ...], at_hand: tuple[SessionKey, ...] | None
    ) -> tuple[SessionKey, ...]:
        return at_hand if at_hand is not None else self.candidates_now(values)

    def lookup_now(self, key: SessionKey, now: float) -> Lookup:
        return None  # never cached: only a read can tell

    async def lookup(self, key: SessionKey, now: float) -> Lookup:
        if not isinstance(key, FrameworkKey):
            return None
        try:
            resolved = await self._resolve(key, now)
        except CorruptRecord as exc:
            log.error("unusable %s session %s…: %s", self.name, key.digest[:12], exc)
            return refusal(exc)
        if resolved is None:
            return None  # no session, an expired one, or one without a logged-in user
        found, lifetime = resolved
        return record_of(found, key.digest, now, lifetime)

    def fallback(self, key: SessionKey, now: float) -> SessionRecord | None:
        return None


class FrameworkSource(UncachedSource):
    def __init__(self, kind: Kind, reader: RedisReader, cookie_name: str) -> None:
        self._kind = kind
        self._reader = reader
        self.name = kind.name
        self.cookie_names = (cookie_name,)

    def _candidate(self, value: str) -> FrameworkKey | None:
        session_id = self._kind.session_id(value)
        if session_id is None:
            return None
        return FrameworkKey("", handle(self._kind.name, session_id), self._kind.store_key(session_id))

    async def _resolve(self, key: FrameworkKey, now: float) -> tuple[Identity, float] | None:
        stored = await self._reader.string(key.store_key)
        if stored is None:
            return None
        found = identity(self._kind.decode(stored.value), self._kind.paths)
        if found is None:
            return None  # a session without a logged-in user (anonymous): no identity
        return found, NO_EXPIRY_SECONDS if stored.ttl_ms is None else stored.ttl_ms / 1000
