"""The Redis (and Valkey) SessionStore, on redis-py's asyncio client with hiredis.

Layout under ``key_prefix`` (default ``sidecar:``):
  ``s:<sha256(token)>``  the session record as JSON, with a TTL at its expiry instant
  ``u:<user id>``        a set of the user's session keys (for ``list`` and ``revoke-user``), pruned lazily
  ``keyring``            the shared token key when ``token.keys`` is not configured

Every key is read and written on its own (no multi-key command or transaction), so the same layout works
unchanged when Sentinel or Cluster clients slot in behind ``open_redis``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.core.redact import redact_url
from sidecar.core.session import SessionRecord, from_json, to_json
from sidecar.errors import BadInput, CorruptRecord, StoreTimeout, StoreUnavailable

STANDALONE_SCHEMES = frozenset({"redis", "rediss", "unix"})


def open_redis(url: str, timeout: float) -> aioredis.Redis:
    """A client for ``url``; ``timeout`` bounds connecting and each command."""
    scheme = urlsplit(url).scheme
    if scheme not in STANDALONE_SCHEMES:
        raise BadInput(
            f"redis.url: scheme {scheme!r} is not supported by this version "
            f"(use one of {', '.join(sorted(STANDALONE_SCHEMES))})"
        )
    try:
        return aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry replaces a pooled connection the server closed (e.g. after a restart);
            # more would only eat into the request's deadline.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
            health_check_interval=30,
        )
    except ValueError as exc:
        raise BadInput(f"redis.url: {exc}") from None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


class RedisStore:
    def __init__(self, client: aioredis.Redis, key_prefix: str, description: str = "redis") -> None:
        self._client = client
        self._prefix = key_prefix
        self._description = description

    @classmethod
    def from_url(cls, url: str, key_prefix: str, timeout: float) -> RedisStore:
        return cls(open_redis(url, timeout), key_prefix, redact_url(url))

    def _session_key(self, key: str) -> str:
        return f"{self._prefix}s:{key}"

    def _user_key(self, user_id: str) -> str:
        return f"{self._prefix}u:{user_id}"

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except RedisTimeoutError as exc:
            raise StoreTimeout(f"{self._description}: timed out ({exc})") from None
        except AuthenticationError as exc:
            raise StoreUnavailable(f"{self._description}: authentication failed ({exc})") from None
        except (RedisConnectionError, OSError) as exc:
            raise StoreUnavailable(f"{self._description}: unreachable ({exc})") from None
        except ResponseError as exc:
            raise StoreUnavailable(f"{self._description}: refused the command ({exc})") from None
        except RedisError as exc:
            raise StoreUnavailable(f"{self._description}: {exc}") from None

    async def get(self, key: str) -> SessionRecord | None:
        async with self._errors():
            raw = await self._client.get(self._session_key(key))
        if raw is None:
            return None
        return from_json(raw)

    async def create(self, key: str, record: SessionRecord, ttl_ms: int) -> None:
        user_key = self._user_key(record.user_id)
        async with self._errors():
            created = await self._client.set(self._session_key(key), to_json(record), px=ttl_ms, nx=True)
            if not created:
                raise StoreUnavailable(f"{self._description}: a session with this key already exists")
            await self._client.sadd(user_key, key)
            # The index lives as long as the user's longest session.
            if await self._client.pttl(user_key) < ttl_ms:
                await self._client.pexpire(user_key, ttl_ms)

    async def touch(self, key: str, record: SessionRecord, ttl_ms: int) -> bool:
        async with self._errors():
            return bool(await self._client.set(self._session_key(key), to_json(record), px=ttl_ms, xx=True))

    async def revoke(self, key: str) -> bool:
        session_key = self._session_key(key)
        async with self._errors():
            raw = await self._client.get(session_key)
            deleted = bool(await self._client.delete(session_key))
            if raw is not None:
                with contextlib.suppress(CorruptRecord):
                    await self._client.srem(self._user_key(from_json(raw).user_id), key)
        return deleted

    async def revoke_user(self, user_id: str) -> int:
        user_key = self._user_key(user_id)
        async with self._errors():
            members = await self._client.smembers(user_key)
            if not members:
                return 0
            keys = sorted(_text(m) for m in members)
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.delete(self._session_key(key))
                deleted = await pipe.execute()
            # Remove only what was read: a session created meanwhile stays indexed.
            await self._client.srem(user_key, *keys)
        return sum(int(n) for n in deleted)

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        user_key = self._user_key(user_id)
        async with self._errors():
            members = await self._client.smembers(user_key)
            if not members:
                return []
            keys = sorted(_text(m) for m in members)
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(self._session_key(key))
                raws = await pipe.execute()
            gone = [key for key, raw in zip(keys, raws, strict=True) if raw is None]
            if gone:
                await self._client.srem(user_key, *gone)
        records = []
        for raw in raws:
            if raw is None:
                continue
            with contextlib.suppress(CorruptRecord):
                records.append(from_json(raw))
        return records

    async def shared_secret(self, proposal: str) -> str:
        key = f"{self._prefix}keyring"
        async with self._errors():
            previous = await self._client.set(key, proposal, nx=True, get=True)
        return proposal if previous is None else _text(previous)

    async def ping(self) -> None:
        async with self._errors():
            await self._client.ping()

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()
