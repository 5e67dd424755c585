"""The Redis (and Valkey) SessionStore, on redis-py's asyncio client with hiredis.

Key layout under ``key_prefix`` (default ``sidecar:``); ``{tag}`` is the user's tag (``user_tag``), a Redis
Cluster hash tag, so a user's sessions and their index share one slot and every multi-key step is one atomic
script:

  ``<prefix>{<tag>}:s:<sha256(token)>``  hash: ``d`` the session (sealed with AES-256-GCM when keys are set),
                                           ``sid`` handle, ``created`` ``seen`` ``idle`` ``abs`` (ms), ``ui``;
                                           expires at min(seen + idle, abs)
  ``<prefix>{<tag>}:u:<ui>``             sorted set of the user's token hashes by creation time; ``ui`` is a
                                           hash of the user id, so key names do not reveal users
  ``<prefix>keyring``                    the shared token key when ``token.keys`` is not configured

The plain ``seen``/``idle``/``abs`` fields drive the TTL and the throttled touch inside the scripts; the sidecar
decides liveness from the sealed copy of idle and absolute expiry, so editing the plain fields cannot stretch a
session past its absolute expiry.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.core.redact import redact_url
from sidecar.core.sealing import Sealer
from sidecar.core.session import TOUCH_FRACTION, TOUCH_MAX_INTERVAL, SessionRecord, from_json, to_json
from sidecar.core.tokens import SessionKey, user_tag
from sidecar.errors import CorruptRecord, StoreTimeout, StoreUnavailable
from sidecar.store.connect import RedisClient, RedisSettings, open_client

# KEYS: session. ARGV: now_ms, touch_fraction, touch_max_ms. Returns {d, seen} as stored before any touch.
_RESOLVE = """
local v = redis.call('HMGET', KEYS[1], 'd', 'seen', 'idle', 'abs')
if not v[1] then return false end
local now, seen, idle, abs = tonumber(ARGV[1]), tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
if seen and idle and abs and now < math.min(seen + idle, abs) and seen + idle < abs
   and now - seen >= math.min(tonumber(ARGV[3]), idle * tonumber(ARGV[2])) then
  redis.call('HSET', KEYS[1], 'seen', ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], math.min(now + idle, abs))
end
return {v[1], v[2] or ''}
"""

# Every script that deletes or moves a session publishes the token hashes on the invalidation channel (the last
# ARGV), so per-process caches on every replica drop them at once.

# KEYS: session, index. ARGV: d, sid, created, seen, idle, abs (ms), ui, digest, max, session prefix, now, channel.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local seen, idle, abs, now = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[11])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'sid', ARGV[2], 'created', ARGV[3], 'seen', ARGV[4],
           'idle', ARGV[5], 'abs', ARGV[6], 'ui', ARGV[7])
redis.call('PEXPIREAT', KEYS[1], math.min(seen + idle, abs))
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('EXISTS', ARGV[10] .. member) == 0 then redis.call('ZREM', KEYS[2], member) end
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[8])
local evicted, max = 0, tonumber(ARGV[9])
while max > 0 and redis.call('ZCARD', KEYS[2]) > max do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  evicted = evicted + redis.call('DEL', ARGV[10] .. oldest[1])
  redis.call('PUBLISH', ARGV[12], oldest[1])
end
if redis.call('PTTL', KEYS[2]) < abs - now then redis.call('PEXPIREAT', KEYS[2], abs) end
return evicted
"""

# KEYS: old session, new session, index. ARGV: d, now, old digest, new digest, channel.
_ROTATE = """
local f = redis.call('HMGET', KEYS[1], 'sid', 'created', 'idle', 'abs', 'ui')
if not f[1] or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local now, idle, abs = tonumber(ARGV[2]), tonumber(f[3]), tonumber(f[4])
if now >= abs then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'd', ARGV[1], 'sid', f[1], 'created', f[2], 'seen', ARGV[2],
           'idle', f[3], 'abs', f[4], 'ui', f[5])
redis.call('PEXPIREAT', KEYS[2], math.min(now + idle, abs))
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[3], f[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[3])
return 1
"""

# KEYS: session. ARGV: index prefix, digest, channel.
_REVOKE = """
local ui = redis.call('HGET', KEYS[1], 'ui')
local deleted = redis.call('DEL', KEYS[1])
if ui then redis.call('ZREM', ARGV[1] .. ui, ARGV[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[2])
return deleted
"""

# KEYS: index. ARGV: session prefix, channel.
_REVOKE_USER = """
local deleted = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  deleted = deleted + redis.call('DEL', ARGV[1] .. member)
  redis.call('PUBLISH', ARGV[2], member)
end
redis.call('DEL', KEYS[1])
return deleted
"""

# KEYS: index. ARGV: session prefix, session id, channel.
_REVOKE_SESSION = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HGET', ARGV[1] .. member, 'sid') == ARGV[2] then
    redis.call('ZREM', KEYS[1], member)
    redis.call('PUBLISH', ARGV[3], member)
    return redis.call('DEL', ARGV[1] .. member)
  end
end
return 0
"""

# KEYS: index. ARGV: session prefix. Returns {digest, d, seen, ...} for live sessions, oldest first.
_LIST = """
local out = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('HMGET', ARGV[1] .. member, 'd', 'seen')
  if v[1] then
    table.insert(out, member); table.insert(out, v[1]); table.insert(out, v[2] or '')
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return out
"""


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


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
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = max(1, _ms(wait_timeout))
        self._description = description
        self._resolve = self._script(_RESOLVE)
        self._create = self._script(_CREATE)
        self._rotate = self._script(_ROTATE)
        self._revoke = self._script(_REVOKE)
        self._revoke_user = self._script(_REVOKE_USER)
        self._revoke_session = self._script(_REVOKE_SESSION)
        self._list = self._script(_LIST)

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

    def _script(self, source: str) -> AsyncScript:
        return self._client.register_script(source)

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
        record = from_json(self._sealer.open(sealed, session_key.encode()))
        try:
            seen_ms = int(_text(seen))
        except ValueError:
            raise CorruptRecord("session field 'seen' is not a number") from None
        # The plain last-seen time is the one touches move (in whole ms); it never outlives the sealed absolute expiry.
        if seen_ms <= _ms(record.last_seen_at):
            return record
        return replace(record, last_seen_at=min(seen_ms / 1000, record.absolute_expires_at))

    # --- errors ------------------------------------------------------------------------------------------------

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

    async def _replicated(self, key_name: str) -> None:
        """Make a revocation durable across a failover: wait for a replica's acknowledgement, when any exist.

        WAIT goes to the primary that holds ``key_name`` (in a Cluster, the owner of its slot).
        """
        if self._wait_replicas <= 0:
            return
        client = self._client
        target: dict[str, Any] = {}
        if isinstance(client, RedisCluster):
            target["target_nodes"] = client.get_node_from_key(key_name)
        info = await client.info("replication", **target)
        wanted = min(self._wait_replicas, int(info.get("connected_slaves", 0)))
        if wanted == 0:
            return
        acknowledged = int(await client.execute_command("WAIT", wanted, self._wait_timeout_ms, **target))
        if acknowledged < wanted:
            raise StoreUnavailable(
                f"{self._description}: the change was made on the primary but only {acknowledged} of {wanted} "
                f"replica(s) acknowledged it within {self._wait_timeout_ms}ms; retry to be sure it survives a failover"
            )

    # --- SessionStore ------------------------------------------------------------------------------------------

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        session_key = self._session_key(key)
        async with self._errors():
            found = await self._resolve(keys=[session_key], args=[_ms(now), TOUCH_FRACTION, _ms(TOUCH_MAX_INTERVAL)])
        if not found:
            return None
        return self._open(session_key, found[0], found[1])

    async def get(self, key: SessionKey) -> SessionRecord | None:
        session_key = self._session_key(key)
        async with self._errors():
            sealed, seen = await self._client.hmget(session_key, ["d", "seen"])
        if sealed is None:
            return None
        return self._open(session_key, sealed, seen)

    async def create(self, key: SessionKey, record: SessionRecord, max_per_user: int = 0) -> int:
        session_key = self._session_key(key)
        args: list[Any] = [
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
        ]
        async with self._errors():
            evicted = int(await self._create(keys=[session_key, self._index_key(record.user_id)], args=args))
        if evicted < 0:
            raise StoreUnavailable(f"{self._description}: a session with this key already exists")
        return evicted

    async def rotate(self, old: SessionKey, new: SessionKey, record: SessionRecord, now: float) -> bool:
        keys = [self._session_key(old), self._session_key(new), self._index_key(record.user_id)]
        async with self._errors():
            moved = bool(
                await self._rotate(
                    keys=keys,
                    args=[self._seal(new, record), _ms(now), old.digest, new.digest, self.invalidation_channel],
                )
            )
            if moved:
                await self._replicated(keys[1])
        return moved

    async def revoke(self, key: SessionKey) -> bool:
        session_key = self._session_key(key)
        async with self._errors():
            deleted = bool(
                await self._revoke(
                    keys=[session_key],
                    args=[self._index_prefix(key.tag), key.digest, self.invalidation_channel],
                )
            )
            await self._replicated(session_key)
        return deleted

    async def revoke_session(self, user_id: str, session_id: str) -> bool:
        prefix = self._session_prefix(user_tag(user_id))
        async with self._errors():
            deleted = bool(
                await self._revoke_session(
                    keys=[self._index_key(user_id)], args=[prefix, session_id, self.invalidation_channel]
                )
            )
            await self._replicated(self._index_key(user_id))
        return deleted

    async def revoke_user(self, user_id: str) -> int:
        prefix = self._session_prefix(user_tag(user_id))
        async with self._errors():
            deleted = int(
                await self._revoke_user(keys=[self._index_key(user_id)], args=[prefix, self.invalidation_channel])
            )
            await self._replicated(self._index_key(user_id))
        return deleted

    async def list_user(self, user_id: str) -> list[SessionRecord]:
        prefix = self._session_prefix(user_tag(user_id))
        async with self._errors():
            flat = await self._list(keys=[self._index_key(user_id)], args=[prefix])
        records = []
        for i in range(0, len(flat), 3):
            with contextlib.suppress(CorruptRecord):
                records.append(self._open(prefix + _text(flat[i]), flat[i + 1], flat[i + 2]))
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
