"""The Redis (and Valkey) SessionStore, on redis-py's asyncio client with hiredis.

Key layout under ``key_prefix`` (default ``sidecar:``); ``{tag}`` is the user's tag (``user_tag``), a Redis
Cluster hash tag, so a user's sessions and their index share one slot and every multi-key step is one atomic
script:

  ``<prefix>{<tag>}:s:<sha256(token)>``  hash: ``d`` the session (sealed with AES-256-GCM when keys are set),
                                           ``sid`` handle, ``created`` ``seen`` ``idle`` ``abs`` (ms), ``ui``;
                                           expires at min(seen + idle, abs)
  ``<prefix>{<tag>}:u:<ui>``             sorted set of the user's token hashes by creation time; ``ui`` is a
                                           hash of the user id, so key names do not reveal users
  ``<prefix>{<tag>}:r:<request id>``     the result of a write a replay of the same call cannot see (a deletion,
                                           an eviction), kept OUTCOME_TTL_MS: redis-py retries a command that timed
                                           out, and its first attempt may have run all the same
  ``<prefix>keyring``                    the shared token key when ``token.keys`` is not configured (no TTL:
                                           ``eviction_warning`` says when the server's policy may evict it)

No script walks a whole index: each touches a fixed batch of entries (PRUNE_BATCH, EVICT_BATCH, SCAN_BATCH), and
listing or revoking a user's sessions takes as many script calls as the index needs.

The plain ``seen``/``idle``/``abs`` fields drive the TTL and the throttled touch inside the scripts; the sidecar
decides liveness from the sealed copy of idle and absolute expiry, so editing the plain fields cannot stretch a
session past its absolute expiry.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from dataclasses import replace

from redis.exceptions import RedisClusterException, RedisError

from sidecar.core.memo import keep
from sidecar.core.redact import redact_url
from sidecar.core.sealing import Sealer
from sidecar.core.session import (
    TOUCH_FRACTION,
    TOUCH_MAX_INTERVAL,
    RecordTooLarge,
    SessionRecord,
    from_json,
    to_json,
)
from sidecar.core.tokens import SessionKey, user_tag
from sidecar.errors import CorruptRecord, StoreTimeout, StoreUnavailable
from sidecar.store.connect import RedisClient, RedisSettings, open_client
from sidecar.store.redis_cluster import TRYAGAIN_WAITED
from sidecar.store.redis_commands import ScriptArg, reply_text
from sidecar.store.redis_durable import ReplicaWait
from sidecar.store.redis_errors import store_errors
from sidecar.store.redis_eviction import keyring_eviction_warning
from sidecar.store.redis_scripts import (
    EVICT_BATCH,
    OUTCOME_TTL_MS,
    PRUNE_BATCH,
    SCAN_BATCH,
    StoreScripts,
    always,
    index_emptied,
    scan_ended,
)

__all__ = ["EVICT_BATCH", "OUTCOME_TTL_MS", "PRUNE_BATCH", "SCAN_BATCH", "RedisStore", "user_index_id"]

MAX_DECODED_RECORDS = 4096
MAX_DECODED_VALUE_BYTES = 2048  # a typical sealed record is 300-600 bytes: at most ~8 MB of values are kept


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def user_index_id(user_id: str) -> str:
    return hashlib.sha256(b"user-index:" + user_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class RedisStore:
    def __init__(
        self,
        client: RedisClient,
        key_prefix: str,
        *,
        sealer: Sealer | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
        description: str = "redis",
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._sealer = sealer or Sealer()
        self._description = description
        wait = ReplicaWait(wait_replicas, max(1, _ms(wait_timeout)), description) if wait_replicas > 0 else None
        self._scripts = StoreScripts(client, wait)
        # The records decoded last, by their stored bytes: a session's sealed value changes only when it is
        # written (a touch moves the separate 'seen' field), so a repeated read skips the unseal and the JSON checks.
        self._decoded: dict[tuple[str, bytes], SessionRecord] = {}

    @classmethod
    def connect(
        cls,
        settings: RedisSettings,
        key_prefix: str,
        *,
        sealer: Sealer | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
    ) -> RedisStore:
        return cls(
            open_client(settings),
            key_prefix,
            sealer=sealer,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
            description=redact_url(settings.url),
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        key_prefix: str,
        timeout: float,
        *,
        sealer: Sealer | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 0.5,
    ) -> RedisStore:
        return cls.connect(
            RedisSettings(url=url, timeout=timeout),
            key_prefix,
            sealer=sealer,
            wait_replicas=wait_replicas,
            wait_timeout=wait_timeout,
        )

    # --- key names ---------------------------------------------------------------------------------------------

    @property
    def invalidation_channel(self) -> str:
        return f"{self._prefix}invalidate"

    @property
    def client(self) -> RedisClient:
        return self._client

    def _session_prefix(self, tag: str) -> str:
        return f"{self._prefix}{{{tag}}}:s:"

    def _index_prefix(self, tag: str) -> str:
        return f"{self._prefix}{{{tag}}}:u:"

    def _session_key(self, key: SessionKey) -> str:
        return self._session_prefix(key.tag) + key.digest

    def _index_key(self, user_id: str) -> str:
        return self._index_prefix(user_tag(user_id)) + user_index_id(user_id)

    # --- encoding ----------------------------------------------------------------------------------------------

    def _seal(self, key: SessionKey, record: SessionRecord) -> bytes:
        return self._sealer.seal(to_json(record), self._session_key(key).encode())

    def _open(self, session_key: str, sealed: object, seen: object) -> SessionRecord:
        if not isinstance(sealed, bytes):
            raise CorruptRecord("session value is missing")
        record = self._decoded.get((session_key, sealed))
        if record is None:
            # Only what decoded is kept: a refused value is refused (and logged) on every read.
            record = from_json(self._sealer.open(sealed, session_key.encode()))
            if len(sealed) <= MAX_DECODED_VALUE_BYTES:  # a large value is decoded each time: the memo stays small
                keep(self._decoded, (session_key, sealed), record, MAX_DECODED_RECORDS)
        try:
            seen_ms = int(reply_text(seen))
        except ValueError:
            raise CorruptRecord("session field 'seen' is not a number") from None
        # The plain last-seen time is the one touches move (in whole ms); it never outlives the sealed absolute expiry.
        if seen_ms <= _ms(record.last_seen_at):
            return record
        return replace(record, last_seen_at=min(seen_ms / 1000, record.absolute_expires_at))

    # --- errors ------------------------------------------------------------------------------------------------

    def _errors(self, write: str | None = None) -> contextlib.AbstractAsyncContextManager[None]:
        """Store errors as StoreError; ``write`` names the write under way, whose outcome a timeout leaves unknown."""
        return store_errors(self._description, write, tryagain_waited=TRYAGAIN_WAITED)

    def _outcome_key(self, tag: str) -> str:
        """Where a write leaves its result for a replay of the same call (a fresh id per call, not per attempt)."""
        return f"{self._prefix}{{{tag}}}:r:{secrets.token_hex(12)}"

    # --- SessionStore ------------------------------------------------------------------------------------------

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        session_key = self._session_key(key)
        args: list[ScriptArg] = [_ms(now), TOUCH_FRACTION, _ms(TOUCH_MAX_INTERVAL), self._sealer.max_stored]
        async with self._errors():
            found = await self._scripts.run(self._scripts.resolve, [session_key], args)
        return self._found(session_key, found)

    async def get(self, key: SessionKey) -> SessionRecord | None:
        session_key = self._session_key(key)
        async with self._errors():
            found = await self._scripts.run(self._scripts.get, [session_key], [self._sealer.max_stored])
        return self._found(session_key, found)

    def _found(self, session_key: str, found: object) -> SessionRecord | None:
        """A read script's answer: None, the record, or RecordTooLarge for the length of a value left unread."""
        if not found:
            return None
        if isinstance(found, int):
            raise RecordTooLarge(
                f"stored session value of {found} bytes is over the {self._sealer.max_stored}-byte bound: "
                "refused unread"
            )
        if not isinstance(found, list) or len(found) != 2:
            raise CorruptRecord("session read answered in an unknown shape")
        return self._open(session_key, found[0], found[1])

    async def create(self, key: SessionKey, record: SessionRecord, max_per_user: int = 0) -> int:
        session_key = self._session_key(key)
        args: list[ScriptArg] = [
            self._seal(key, record),
            record.session_id,
            _ms(record.created_at),
            _ms(record.last_seen_at),
            _ms(record.idle_timeout),
            _ms(record.absolute_expires_at),
            user_index_id(record.user_id),
            key.digest,
            max_per_user,
            self._session_prefix(key.tag),
            _ms(record.created_at),
            self.invalidation_channel,
            PRUNE_BATCH,
            EVICT_BATCH,
            OUTCOME_TTL_MS,
        ]
        keys = [session_key, self._index_key(record.user_id), self._outcome_key(key.tag)]
        async with self._errors("session create"):
            evicted = int(await self._scripts.run(self._scripts.create, keys, args))
        if evicted < 0:
            raise StoreUnavailable(f"{self._description}: a session with this key already exists")
        return evicted

    async def rotate(self, old: SessionKey, new: SessionKey, record: SessionRecord, now: float) -> bool:
        keys = [self._session_key(old), self._session_key(new), self._index_key(record.user_id)]
        args: list[ScriptArg] = [
            self._seal(new, record),
            _ms(now),
            old.digest,
            new.digest,
            self.invalidation_channel,
            record.session_id,
        ]
        async with self._errors("session rotation"):
            return bool(await self._scripts.run(self._scripts.rotate, keys, args, durable=bool))

    async def revoke(self, key: SessionKey) -> bool:
        session_key = self._session_key(key)
        args: list[ScriptArg] = [self._index_prefix(key.tag), key.digest, self.invalidation_channel, OUTCOME_TTL_MS]
        async with self._errors("revocation"):
            return bool(
                await self._scripts.run(self._scripts.revoke, [session_key, self._outcome_key(key.tag)], args, always)
            )

    async def revoke_session(self, user_id: str, session_id: str) -> bool:
        tag, index = user_tag(user_id), self._index_key(user_id)
        prefix, outcome = self._session_prefix(tag), self._outcome_key(tag)
        last, last_score = "", ""
        async with self._errors("revocation"):
            while True:
                args: list[ScriptArg] = [
                    prefix,
                    last,
                    last_score,
                    SCAN_BATCH,
                    session_id,
                    self.invalidation_channel,
                    OUTCOME_TTL_MS,
                ]
                found = await self._scripts.run(self._scripts.revoke_session, [index, outcome], args, scan_ended)
                if int(found[0]) == 1:
                    return True
                if int(found[1]) == 1:
                    return False
                last, last_score = reply_text(found[2]), reply_text(found[3])

    async def revoke_user(self, user_id: str) -> int:
        """Batches of SCAN_BATCH, oldest first, until the index is empty. Sessions created meanwhile go too; a user
        whose sessions are created as fast as they are revoked gets an error after twice the rounds it needed."""
        tag, index = user_tag(user_id), self._index_key(user_id)
        prefix = self._session_prefix(tag)
        deleted, rounds, limit = 0, 0, 0
        try:
            async with self._errors("revocation of the user's sessions"):
                while True:
                    args: list[ScriptArg] = [prefix, self.invalidation_channel, SCAN_BATCH, OUTCOME_TTL_MS]
                    done, left = await self._scripts.run(
                        self._scripts.revoke_user, [index, self._outcome_key(tag)], args, index_emptied
                    )
                    deleted += int(done)
                    rounds += 1
                    if int(left) == 0:
                        break
                    if rounds == 1:
                        limit = 2 * (1 + -(-int(left) // SCAN_BATCH)) + 10
                    elif rounds >= limit:
                        raise StoreUnavailable(
                            f"{self._description}: sessions of this user are being created as fast as they are "
                            f"revoked; {deleted} revoked so far, {left} left: revoke the user again"
                        )
        except StoreTimeout as exc:
            raise StoreTimeout(f"{exc}; {deleted} revoked before that") from None
        return deleted

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        tag, index = user_tag(user_id), self._index_key(user_id)
        prefix = self._session_prefix(tag)
        records: dict[str, SessionRecord] = {}  # by token hash: a scan may see an entry twice
        last, last_score = "", ""
        async with self._errors():
            while True:
                args: list[ScriptArg] = [prefix, last, last_score, SCAN_BATCH, self._sealer.max_stored]
                flat = await self._scripts.run(self._scripts.list, [index], args)
                for i in range(3, len(flat), 3):
                    digest = reply_text(flat[i])
                    with contextlib.suppress(CorruptRecord):
                        records[digest] = self._open(prefix + digest, flat[i + 1], flat[i + 2])
                if int(flat[0]) == 1:
                    break
                last, last_score = reply_text(flat[1]), reply_text(flat[2])
        return list(records.values())

    @property
    def keyring_key(self) -> str:
        return f"{self._prefix}keyring"

    async def eviction_warning(self) -> str | None:
        """One line to log when the server's ``maxmemory-policy`` may evict the shared key ring, else None.

        The ring (``<prefix>keyring``, used when ``token.keys`` is not set) has no TTL, so only ``allkeys-*`` policies
        can evict it; losing it logs every user out once a replica mints a new key. ``noeviction`` and ``volatile-*``
        are fine. Servers that refuse CONFIG GET (ACLs, managed Redis) get a line saying it could not be checked.
        app.py calls it once at startup when ``token.keys`` is not set (``if (text := await store.eviction_warning()):
        log.warning(text)``); it never raises and never stops the sidecar.
        """
        return await keyring_eviction_warning(self._client, self._description, self.keyring_key)

    async def shared_secret(self, proposal: str) -> str:
        key = self.keyring_key
        async with self._errors():
            previous = await self._client.set(key, proposal, nx=True, get=True)
        return proposal if previous is None else reply_text(previous)

    async def ping(self) -> None:
        async with self._errors():
            await self._client.ping()

    async def close(self) -> None:
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self._client.aclose()
