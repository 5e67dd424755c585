"""Reading what another framework keeps in Redis, one round trip per session, bounded by MAX_INPUT_BYTES.

A planted value can be any size: a string is read with GETRANGE (never more than the bound, plus one byte to
tell it was over) beside its STRLEN; hash fields are measured with HSTRLEN before HMGET fetches them. Only read
commands are sent (GETRANGE, STRLEN, PTTL, HSTRLEN, HMGET), so a read-only ACL user is enough:
``+getrange +strlen +pttl +exists +hstrlen +hmget ~<key_prefix>*``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from redis.exceptions import ResponseError

from sidecar.core.session import RecordTooLarge
from sidecar.errors import CorruptRecord
from sidecar.sources.formats import MAX_INPUT_BYTES
from sidecar.store.connect import RedisClient
from sidecar.store.redis_errors import store_errors


@dataclass(frozen=True, slots=True)
class StoredString:
    value: bytes
    ttl_ms: int | None  # None: the key never expires


@contextlib.contextmanager
def wrong_type_refused() -> Iterator[None]:
    """A key of another Redis type where a session belongs (planted, or another app's) is a refused record, not a
    store failure: the store answered, and what it holds is no session."""
    try:
        yield
    except ResponseError as exc:
        if "WRONGTYPE" in str(exc):
            raise CorruptRecord("the session's key holds another Redis type") from None
        raise


class RedisReader:
    """The reads of one application's Redis (``description`` names it in errors, without its password)."""

    def __init__(self, client: RedisClient, description: str) -> None:
        self._client = client
        self._description = description

    @property
    def client(self) -> RedisClient:
        return self._client

    async def string(self, key: str) -> StoredString | None:
        """The value under ``key`` and its time to live; None when there is none. Raises RecordTooLarge for a value
        over the bound (without reading it) and StoreError when Redis fails."""
        async with store_errors(self._description):
            pipe = self._client.pipeline(transaction=False)
            pipe.strlen(key)
            pipe.getrange(key, 0, MAX_INPUT_BYTES)
            pipe.pttl(key)
            with wrong_type_refused():
                length, value, ttl = await pipe.execute()
        if int(length) > MAX_INPUT_BYTES:
            raise RecordTooLarge(f"the stored session is {int(length):,} bytes, more than {MAX_INPUT_BYTES:,}")
        ttl = int(ttl)
        if ttl == -2 or not value:  # gone (or expired between the commands), or an empty string: no session
            return None
        return StoredString(bytes(value), None if ttl < 0 else ttl)

    async def hash_fields(self, key: str, fields: Sequence[str]) -> list[bytes | None] | None:
        """The values of ``fields`` of the hash ``key`` (None for an absent field); None when the key is absent.
        Raises RecordTooLarge when the fields together are over the bound, StoreError when Redis fails."""
        async with store_errors(self._description):
            pipe = self._client.pipeline(transaction=False)
            pipe.exists(key)
            for field in fields:
                pipe.hstrlen(key, field)
            with wrong_type_refused():
                exists, *lengths = await pipe.execute()
            if not int(exists):
                return None
            total = sum(int(n) for n in lengths)
            if total > MAX_INPUT_BYTES:
                raise RecordTooLarge(f"the stored session's fields hold {total:,} bytes, more than {MAX_INPUT_BYTES:,}")
            values = await self._client.hmget(key, list(fields))
        fetched = [v if v is None or isinstance(v, bytes) else v.encode() for v in values]
        # A value swapped for a larger one between the two commands is refused all the same.
        if sum(len(v) for v in fetched if v is not None) > MAX_INPUT_BYTES:
            raise RecordTooLarge(f"the stored session's fields hold more than {MAX_INPUT_BYTES:,} bytes")
        return fetched
