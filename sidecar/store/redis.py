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

import asyncio
import contextlib
import functools
import hashlib
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

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

# Every script does bounded work whatever a user's history: at most a fixed batch of index entries per call
# (PRUNE_BATCH, EVICT_BATCH, SCAN_BATCH below); a whole index is walked only by several calls from Python.
PRUNE_BATCH = 10  # create: the oldest entries checked, and as many more sampled at random
EVICT_BATCH = 10  # create: at most this many evicted per call when the user is over max_per_user
SCAN_BATCH = 50  # list, revoke_session, revoke_user: index entries per script call
# A write is retried after a timeout (connect.RETRIES) and its first attempt may have run all the same; a write
# whose effect a replay cannot see (a deletion, an eviction) leaves its result under ``<prefix>{tag}:r:<request
# id>`` for this long, and a replay answers it instead of acting again.
OUTCOME_TTL_MS = 60_000

# The reads first compare the stored value's length with the longest value the sealer opens (``Sealer.max_stored``)
# and answer only that length when it is over: a planted value of megabytes is refused without crossing the network.

# KEYS: session. ARGV: now_ms, touch_fraction, touch_max_ms, max_stored. Returns {d, seen} as stored before any
# touch, false when absent, or the length of ``d`` (an integer) when it is over max_stored (nothing touched).
_RESOLVE = """
local n = redis.call('HSTRLEN', KEYS[1], 'd')
if n > tonumber(ARGV[4]) then return n end
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

# KEYS: session. ARGV: max_stored. Returns {d, seen}, false when absent, or the length of ``d`` when over max_stored.
_GET = """
local n = redis.call('HSTRLEN', KEYS[1], 'd')
if n > tonumber(ARGV[1]) then return n end
local v = redis.call('HMGET', KEYS[1], 'd', 'seen')
if not v[1] then return false end
return {v[1], v[2] or ''}
"""

# Every script that deletes or moves a session publishes the token hashes on the invalidation channel, so
# per-process caches on every replica drop them at once.

# The scripts whose change must be known on a replica (rotate, the revocations: RedisStore._eval waits for it)
# write something whenever they answer what is waited for, a replay or a no-op too (the same outcome again, the
# same handle again). WAIT counts acknowledgements of its connection's last write, and the replication offset only
# grows: so a WAIT after a replay covers the first run's change, whose connection a timeout closed, and a WAIT
# after revoking what an earlier, unacknowledged revocation already deleted covers that deletion.

# KEYS: session, index, outcome. ARGV: d, sid, created, seen, idle, abs (ms), ui, digest, max, session prefix, now,
# channel, prune batch, evict batch, outcome ttl. Returns how many were evicted, -1 when the key holds another session.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- The token is new and random: the same key with the same handle is this very create, run before.
  if redis.call('HGET', KEYS[1], 'sid') == ARGV[2] then return tonumber(redis.call('GET', KEYS[3]) or '0') end
  return -1
end
local seen, idle, abs, now = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[11])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'sid', ARGV[2], 'created', ARGV[3], 'seen', ARGV[4],
           'idle', ARGV[5], 'abs', ARGV[6], 'ui', ARGV[7])
redis.call('PEXPIREAT', KEYS[1], math.min(seen + idle, abs))
-- Dead entries leave the index a few per write: the oldest (past their absolute expiry first) and a random sample
-- (idle-expired ones anywhere), so the index stays near its live size at a fixed cost per create.
local batch = tonumber(ARGV[13])
local function prune(members)
  for _, member in ipairs(members) do
    if redis.call('EXISTS', ARGV[10] .. member) == 0 then redis.call('ZREM', KEYS[2], member) end
  end
end
prune(redis.call('ZRANGE', KEYS[2], 0, batch - 1))
prune(redis.call('ZRANDMEMBER', KEYS[2], batch))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[8])
local evicted, max = 0, tonumber(ARGV[9])
if max > 0 then
  local over = math.min(redis.call('ZCARD', KEYS[2]) - max, tonumber(ARGV[14]))
  if over > 0 then
    for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, over)) do
      if evicted < over and member ~= ARGV[8] then
        redis.call('ZREM', KEYS[2], member)
        evicted = evicted + redis.call('DEL', ARGV[10] .. member)
        redis.call('PUBLISH', ARGV[12], member)
      end
    end
  end
end
if evicted > 0 then redis.call('SET', KEYS[3], evicted, 'PX', ARGV[15]) end
if redis.call('PTTL', KEYS[2]) < abs - now then redis.call('PEXPIREAT', KEYS[2], abs) end
return evicted
"""

# KEYS: old session, new session, index. ARGV: d, now, old digest, new digest, channel, sid.
_ROTATE = """
local f = redis.call('HMGET', KEYS[1], 'sid', 'created', 'idle', 'abs', 'ui')
if not f[1] then
  -- The new token is new and random: its key holding this handle means this very rotation ran before.
  if redis.call('HGET', KEYS[2], 'sid') == ARGV[6] then
    redis.call('HSET', KEYS[2], 'sid', ARGV[6])
    return 1
  end
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
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

# KEYS: session, outcome. ARGV: index prefix, digest, channel, outcome ttl.
_REVOKE = """
local saved = redis.call('GET', KEYS[2])
if saved then
  redis.call('SET', KEYS[2], saved, 'PX', ARGV[4])
  return tonumber(saved)
end
local ui = redis.call('HGET', KEYS[1], 'ui')
local deleted = redis.call('DEL', KEYS[1])
if ui then redis.call('ZREM', ARGV[1] .. ui, ARGV[2]) end
redis.call('PUBLISH', ARGV[3], ARGV[2])
redis.call('SET', KEYS[2], deleted, 'PX', ARGV[4])
return deleted
"""

# KEYS: index, outcome. ARGV: session prefix, channel, batch, outcome ttl. Deletes the oldest ``batch`` entries'
# sessions; returns {deleted, entries left}.
_REVOKE_USER = """
local saved = redis.call('GET', KEYS[2])
if saved then
  redis.call('SET', KEYS[2], saved, 'PX', ARGV[4])
  local deleted, left = string.match(saved, '^(%d+):(%d+)$')
  return {tonumber(deleted), tonumber(left)}
end
local deleted, popped = 0, redis.call('ZPOPMIN', KEYS[1], tonumber(ARGV[3]))
for i = 1, #popped, 2 do
  deleted = deleted + redis.call('DEL', ARGV[1] .. popped[i])
  redis.call('PUBLISH', ARGV[2], popped[i])
end
local left = redis.call('ZCARD', KEYS[1])
redis.call('SET', KEYS[2], deleted .. ':' .. left, 'PX', ARGV[4])
return {deleted, left}
"""

# A scan of the index from a cursor: the last member a call saw and its score. The next call starts right after
# that member, or, when it left the index meanwhile, at the first entry of its score (a few entries seen twice,
# none skipped, whatever else changed in between). Defines ``batch`` (the entries, with scores) and ``done``.
_SCAN_FROM = """
local start, n = 0, tonumber(ARGV[4])
if ARGV[2] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[2])
  if rank then start = rank + 1 else start = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[3]) end
end
local batch = redis.call('ZRANGE', KEYS[1], start, start + n - 1, 'WITHSCORES')
local done = #batch < 2 * n and 1 or 0
local last, last_score = batch[#batch - 1] or '', batch[#batch] or ''
"""

# KEYS: index, outcome. ARGV: session prefix, cursor member, cursor score, batch, session id, channel, outcome ttl.
# Returns {1} when it revoked the session, {0, done, last member, last score} when not in this batch.
_REVOKE_SESSION = (
    """
local saved = redis.call('GET', KEYS[2])
if saved then
  redis.call('SET', KEYS[2], saved, 'PX', ARGV[7])
  if saved == '1' then return {1} end
  return {0, 1, '', ''}
end
"""
    + _SCAN_FROM
    + """
for i = 1, #batch, 2 do
  local member = batch[i]
  local sid = redis.call('HGET', ARGV[1] .. member, 'sid')
  if sid == ARGV[5] then
    redis.call('ZREM', KEYS[1], member)
    redis.call('PUBLISH', ARGV[6], member)
    redis.call('DEL', ARGV[1] .. member)
    redis.call('SET', KEYS[2], 1, 'PX', ARGV[7])
    return {1}
  elseif not sid then
    redis.call('ZREM', KEYS[1], member)
  end
end
if done == 1 then redis.call('SET', KEYS[2], 0, 'PX', ARGV[7]) end
return {0, done, last, last_score}
"""
)

# KEYS: index. ARGV: session prefix, cursor member, cursor score, batch, max_stored. Returns {done, last member,
# last score, digest, d, seen, ...} for this batch's live sessions, oldest first; drops dead entries on the way and
# leaves out (unread) sessions whose value is over max_stored, as the caller skips corrupt ones.
_LIST = (
    _SCAN_FROM
    + """
local out = {done, last, last_score}
for i = 1, #batch, 2 do
  local member = batch[i]
  if redis.call('HSTRLEN', ARGV[1] .. member, 'd') <= tonumber(ARGV[5]) then
    local v = redis.call('HMGET', ARGV[1] .. member, 'd', 'seen')
    if v[1] then
      table.insert(out, member); table.insert(out, v[1]); table.insert(out, v[2] or '')
    else
      redis.call('ZREM', KEYS[1], member)
    end
  end
end
return out
"""
)


_EVICTION_ADVICE = (
    "set token.keys in production (the ring in {0} is then unused), or set maxmemory-policy to noeviction or a "
    "volatile-* policy"
)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


ScriptArg = bytes | str | int | float


def _connected_replicas(info: object) -> int:
    """``connected_slaves`` from an INFO replication answer (0 when it is missing)."""
    for line in _text(info).splitlines():
        name, _, value = line.partition(":")
        if name == "connected_slaves":
            return int(value)
    return 0


# When a waited write must be known on a replica, from the script's answer (see RedisStore._eval).
def _always(_answer: object) -> bool:
    return True


def _scan_ended(found: Any) -> bool:  # revoke_session: found it, or looked through the whole index
    return int(found[0]) == 1 or int(found[1]) == 1


def _index_emptied(answer: Any) -> bool:  # revoke_user: the last round
    return int(answer[1]) == 0


# --- the ASK window of a Cluster slot migration ------------------------------------------------------------------
#
# While a slot migrates, its source answers ASK for the keys already moved, and the target serves them only to a
# connection that sent ASKING right before the command. redis-py 8.1.0's asyncio RedisCluster._execute_command sends
# ASKING with one ClusterNode.execute_command call and the command with another, and each call takes a connection
# from the node's free deque (acquire_connection: ``_free.popleft()``; release: ``_free.append()``, so FIFO): once
# the client holds two or more idle connections to the target, the command goes out on a connection that did not
# send ASKING, the target answers MOVED back to the source (still the slot's owner), which ASKs again, until the 16
# rounds of RedisClusterRequestTTL run out: ClusterError('TTL exhausted.'), a 503 for a live session; the MOVED
# storm also makes the client reinitialise, closing connections other requests are using. So on a Cluster the
# store's scripts go to the slot's primary from here, and an ASK is followed by ASKING and the command written
# together on one connection. Anything but an ASK, a TRYAGAIN or the script's own answer goes back to redis-py's
# path (slot-map refresh, reconnects, retries). Drop this once redis-py sends ASKING on the command's connection
# (tests/integration/test_redis_store.py::test_cluster_reads_answer_inside_an_ask_window fails without it).
#
# TRYAGAIN is Redis Cluster's own rule, not a client bug: a node refuses a multi-key command on a migrating slot
# while some of its keys are missing. Every write script names a key that does not exist yet (the new session, the
# outcome key), so writes wait here for the slot to settle (TRYAGAIN_WAITS x TRYAGAIN_PAUSE), then fail unapplied.
ASK_ROUNDS = 5  # ASK redirects (and NOSCRIPT answers) in a row followed here before handing the call to redis-py
TRYAGAIN_WAITS = 10
TRYAGAIN_PAUSE = 0.03


Command = tuple[ScriptArg, ...]
# Runs a script call (after ASKING inside an ASK window) on one connection; the script's answer.
Runner = Callable[[Connection, list[Command]], Awaitable[Any]]


def _source(script: AsyncScript) -> ScriptArg:
    return script.script if isinstance(script.script, str | bytes) else bytes(script.script)


async def _exchange(connection: Connection, commands: list[Command]) -> list[Any]:
    """``commands`` written at once on ``connection``; their answers, an error reply as its ResponseError."""
    await connection.send_packed_command(connection.pack_commands(commands))
    # Every answer is read whatever the others were, so the connection goes back to the pool with nothing pending
    # (an I/O error or a cancellation inside a read disconnects it instead).
    answers: list[Any] = []
    for _ in commands:
        try:
            answers.append(await connection.read_response())
        except ResponseError as exc:
            answers.append(exc)
    return answers


def _last(answers: list[Any]) -> Any:
    """The last command's answer, or the first error any of them got."""
    for answer in answers:
        if isinstance(answer, ResponseError):
            raise answer
    return answers[-1]


async def _plain(connection: Connection, commands: list[Command]) -> Any:
    return _last(await _exchange(connection, commands))


async def _on_node(node: ClusterNode, commands: list[Command], run: Runner) -> Any:
    connection = node.acquire_connection()
    try:
        await node.disconnect_if_needed(connection)
        return await run(connection, commands)
    finally:
        node.release(connection)


async def _on_slot_primary(
    client: RedisCluster, script: AsyncScript, keys: list[str], args: list[ScriptArg], run: Runner | None
) -> tuple[Any] | None:
    """``script`` where its first key lives, following ASK redirects on one connection (see above); its answer in a
    1-tuple, or None when the call must go to redis-py's path. ``run`` (None: a plain call) runs it on the
    connection."""
    evalsha: Command = ("EVALSHA", script.sha, len(keys), *keys, *args)
    # The ASK target may never have run the script: EVAL carries it (and caches it there).
    eval_: Command = ("EVAL", _source(script), len(keys), *keys, *args)
    try:
        node: ClusterNode | None = client.get_node_from_key(keys[0])
    except RedisClusterException:  # no slot map yet: redis-py's path builds it
        node = None
    command, asking, rounds, waits = evalsha, False, ASK_ROUNDS, TRYAGAIN_WAITS
    while node is not None and rounds > 0:
        try:
            if asking:
                return (await _on_node(node, [("ASKING",), eval_], run or _plain),)
            if run is None:
                return (await node.execute_command(*command),)
            return (await _on_node(node, [command], run),)
        except MovedError:  # a subclass of AskError: the slot has a new owner, which redis-py's path learns
            break
        except AskError as exc:
            node, asking = client.get_node(host=exc.host, port=exc.port), True  # None: a node it does not know yet
            rounds -= 1
        except TryAgainError:
            waits -= 1
            if waits <= 0:
                raise
            await asyncio.sleep(TRYAGAIN_PAUSE)
            node, command, asking, rounds = client.get_node_from_key(keys[0]), evalsha, False, ASK_ROUNDS
        except NoScriptError:
            command = eval_
            rounds -= 1
        except (ClusterDownError, RedisConnectionError, RedisTimeoutError):
            break
    return None


async def _cluster_script(
    client: RedisCluster, script: AsyncScript, keys: list[str], args: list[ScriptArg], run: Runner | None = None
) -> Any:
    """``script``'s answer on a Cluster; ``run`` runs it on the connection of the slot's primary (None: plainly)."""
    done = await _on_slot_primary(client, script, keys, args, run)
    if done is not None:
        return done[0]
    answer = await script(keys=keys, args=args)
    # redis-py's path ran it on a connection it chose. ``run`` runs it again, a replay answering the same, so as to
    # follow it on the same connection: every waited script writes, a replay too, so that connection's last write
    # comes after the first run's change.
    if run is not None and await _on_slot_primary(client, script, keys, args, run) is None:
        raise RedisError(
            "the change was made on the primary, but whether a replica acknowledged it could not be checked "
            "(the slot's primary did not answer a direct call); retry to be sure it survives a failover"
        )
    return answer


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
        self._get = self._script(_GET)
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

    async def _eval(
        self,
        script: AsyncScript,
        keys: list[str],
        args: list[ScriptArg],
        durable: Callable[[Any], bool] | None = None,
    ) -> Any:
        """The script's answer. ``durable``: the write must be known on a replica when it says so of the answer.

        WAIT counts the replicas that acknowledged the last write of the connection it goes out on, and redis-py
        takes a connection from the pool for each command (a Cluster node's pool hands them out in turn): so a
        durable write runs as the script and INFO written together, then WAIT, all on one connection."""
        client = self._client
        if durable is None or self._wait_replicas <= 0:
            if isinstance(client, RedisCluster):
                return await _cluster_script(client, script, keys, args)
            return await script(keys=keys, args=args)
        run: Runner = functools.partial(self._run_durably, durable=durable)
        if isinstance(client, RedisCluster):
            return await _cluster_script(client, script, keys, args, run)
        pool = client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            # Like redis-py's own commands: a connection or timeout error disconnects and the whole call is
            # repeated (a replay answers what the first run did, and writes, see _REVOKE).
            return await connection.retry.call_with_retry(
                lambda: self._script_on(connection, script, keys, args, run),
                lambda _error: connection.disconnect(),
            )
        finally:
            await pool.release(connection)

    async def _script_on(
        self, connection: Connection, script: AsyncScript, keys: list[str], args: list[ScriptArg], run: Runner
    ) -> Any:
        try:
            return await run(connection, [("EVALSHA", script.sha, len(keys), *keys, *args)])
        except NoScriptError:
            return await run(connection, [("EVAL", _source(script), len(keys), *keys, *args)])

    async def _run_durably(
        self, connection: Connection, commands: list[Command], durable: Callable[[Any], bool]
    ) -> Any:
        """``commands`` and INFO on ``connection``, then, when ``durable`` says so of the answer, WAIT for a replica's
        acknowledgement on the same connection (when any replica is connected); StoreUnavailable when too few do."""
        answers = await _exchange(connection, [*commands, ("INFO", "replication")])
        answer = _last(answers[:-1])
        if not durable(answer):
            return answer
        wanted = min(self._wait_replicas, _connected_replicas(_last(answers)))
        if wanted == 0:
            return answer
        await connection.send_packed_command(connection.pack_command("WAIT", wanted, self._wait_timeout_ms))
        # The server answers after at most the wait: the socket timeout (often shorter) bounds only the rest. A
        # WAIT timed out and sent again on a new connection would count nothing, as that connection wrote nothing.
        limit = (connection.socket_timeout or 0) + self._wait_timeout_ms / 1000
        try:
            async with asyncio.timeout(limit):
                acknowledged = int(await connection.read_response(timeout=math.inf))
        except TimeoutError:  # the read was cancelled, which disconnected the connection: no answer is left pending
            raise RedisTimeoutError(f"no answer to WAIT within {limit:.2f}s") from None
        if acknowledged < wanted:
            raise StoreUnavailable(
                f"{self._description}: the change was made on the primary but only {acknowledged} of {wanted} "
                f"replica(s) acknowledged it within {self._wait_timeout_ms}ms; retry to be sure it survives a failover"
            )
        return answer

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
    async def _errors(self, write: str | None = None) -> AsyncIterator[None]:
        """Store errors as StoreError; ``write`` names the write under way, whose outcome a timeout leaves unknown."""
        try:
            yield
        except RedisTimeoutError as exc:
            if write is None:
                raise StoreTimeout(f"{self._description}: timed out ({exc})") from None
            raise StoreTimeout(
                f"{self._description}: timed out ({exc}); outcome unknown: the {write} may or may not have been "
                "applied (repeating it is safe)"
            ) from None
        except AuthenticationError as exc:
            raise StoreUnavailable(f"{self._description}: authentication failed ({exc})") from None
        except (RedisConnectionError, OSError) as exc:
            raise StoreUnavailable(f"{self._description}: unreachable ({exc})") from None
        except TryAgainError:
            raise StoreUnavailable(
                f"{self._description}: the keys' Cluster slot is being migrated, and Redis refuses a multi-key "
                f"{write or 'read'} there until it ends (TRYAGAIN for {TRYAGAIN_WAITS * TRYAGAIN_PAUSE:.1f}s); "
                "this step was not applied: retry"
            ) from None
        except ResponseError as exc:
            raise StoreUnavailable(f"{self._description}: refused the command ({exc})") from None
        except RedisError as exc:
            raise StoreUnavailable(f"{self._description}: {exc}") from None
        except RedisClusterException as exc:
            # Not a RedisError: what redis-py's Cluster client raises when no node answers (or none covers a slot).
            raise StoreUnavailable(f"{self._description}: unreachable: no usable cluster node ({exc})") from None

    def _outcome_key(self, tag: str) -> str:
        """Where a write leaves its result for a replay of the same call (a fresh id per call, not per attempt)."""
        return f"{self._prefix}{{{tag}}}:r:{secrets.token_hex(12)}"

    # --- SessionStore ------------------------------------------------------------------------------------------

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        session_key = self._session_key(key)
        args: list[ScriptArg] = [_ms(now), TOUCH_FRACTION, _ms(TOUCH_MAX_INTERVAL), self._sealer.max_stored]
        async with self._errors():
            found = await self._eval(self._resolve, [session_key], args)
        return self._found(session_key, found)

    async def get(self, key: SessionKey) -> SessionRecord | None:
        session_key = self._session_key(key)
        async with self._errors():
            found = await self._eval(self._get, [session_key], [self._sealer.max_stored])
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
            evicted = int(await self._eval(self._create, keys, args))
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
            return bool(await self._eval(self._rotate, keys, args, durable=bool))

    async def revoke(self, key: SessionKey) -> bool:
        session_key = self._session_key(key)
        args: list[ScriptArg] = [self._index_prefix(key.tag), key.digest, self.invalidation_channel, OUTCOME_TTL_MS]
        async with self._errors("revocation"):
            return bool(await self._eval(self._revoke, [session_key, self._outcome_key(key.tag)], args, _always))

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
                found = await self._eval(self._revoke_session, [index, outcome], args, _scan_ended)
                if int(found[0]) == 1:
                    return True
                if int(found[1]) == 1:
                    return False
                last, last_score = _text(found[2]), _text(found[3])

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
                    done, left = await self._eval(
                        self._revoke_user, [index, self._outcome_key(tag)], args, _index_emptied
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
                flat = await self._eval(self._list, [index], args)
                for i in range(3, len(flat), 3):
                    digest = _text(flat[i])
                    with contextlib.suppress(CorruptRecord):
                        records[digest] = self._open(prefix + digest, flat[i + 1], flat[i + 2])
                if int(flat[0]) == 1:
                    break
                last, last_score = _text(flat[1]), _text(flat[2])
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
        what, advice = f"{self._description}: maxmemory-policy", _EVICTION_ADVICE.format(self.keyring_key)
        try:
            policies = await self._eviction_policies()
        except RedisTimeoutError as exc:
            return f"{what} could not be checked (timed out: {exc}); {advice}"
        except (RedisError, RedisClusterException, OSError) as exc:
            return f"{what} could not be checked ({exc}); {advice}"
        if not policies:
            return f"{what} could not be checked (CONFIG GET answered nothing); {advice}"
        evicting = sorted({p for p in policies if not (p == "noeviction" or p.startswith("volatile-"))})
        if not evicting:
            return None
        return (
            f"{what} is {', '.join(evicting)}: the server may evict keys without a TTL, such as the shared token key "
            f"ring {self.keyring_key}, which logs every user out once a new key is minted; {advice}"
        )

    async def _eviction_policies(self) -> list[str]:
        """The policy of every primary (in a Cluster each may differ)."""
        client = self._client
        if isinstance(client, RedisCluster):
            answer = await client.config_get("maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)
        else:
            answer = await client.config_get("maxmemory-policy")
        found: list[str] = []

        def collect(value: object) -> None:  # one node answers {name: value}, several {node: {name: value}}
            if isinstance(value, dict):
                for inner in value.values():
                    collect(inner)
            else:
                found.append(_text(value).strip().lower())

        collect(answer)
        return found

    async def shared_secret(self, proposal: str) -> str:
        key = self.keyring_key
        async with self._errors():
            previous = await self._client.set(key, proposal, nx=True, get=True)
        return proposal if previous is None else _text(previous)

    async def ping(self) -> None:
        async with self._errors():
            await self._client.ping()

    async def close(self) -> None:
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await self._client.aclose()
