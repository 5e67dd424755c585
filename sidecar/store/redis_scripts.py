"""The store's Lua scripts, and the one way they run (``StoreScripts.run``): plainly, to the slot's primary on a
Cluster (``redis_cluster``), and followed by WAIT on the writing connection when a write must be known on a replica
(``redis_durable``). The key layout the scripts work on is described in ``redis``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from sidecar.store.connect import RedisClient
from sidecar.store.redis_cluster import cluster_script
from sidecar.store.redis_commands import ScriptArg
from sidecar.store.redis_durable import ReplicaWait, script_on_one_connection

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

# The scripts whose change must be known on a replica (rotate, the revocations: StoreScripts.run waits for it)
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


# When a waited write must be known on a replica, from the script's answer (see StoreScripts.run).
def always(_answer: object) -> bool:
    return True


def scan_ended(found: Any) -> bool:  # revoke_session: found it, or looked through the whole index
    return int(found[0]) == 1 or int(found[1]) == 1


def index_emptied(answer: Any) -> bool:  # revoke_user: the last round
    return int(answer[1]) == 0


class StoreScripts:
    """The scripts registered on one client (redis-py sends EVALSHA, and EVAL once a server lacks the script)."""

    def __init__(self, client: RedisClient, wait: ReplicaWait | None) -> None:
        self._client = client
        self._wait = wait  # None: no write waits for replicas
        self.resolve = client.register_script(_RESOLVE)
        self.get = client.register_script(_GET)
        self.create = client.register_script(_CREATE)
        self.rotate = client.register_script(_ROTATE)
        self.revoke = client.register_script(_REVOKE)
        self.revoke_user = client.register_script(_REVOKE_USER)
        self.revoke_session = client.register_script(_REVOKE_SESSION)
        self.list = client.register_script(_LIST)

    async def run(
        self,
        script: AsyncScript,
        keys: list[str],
        args: list[ScriptArg],
        durable: Callable[[Any], bool] | None = None,
    ) -> Any:
        """The script's answer. ``durable``: the write must be known on a replica when it says so of the answer
        (WAIT on the connection that wrote it, see ``redis_durable``)."""
        client = self._client
        if durable is None or self._wait is None:
            if isinstance(client, RedisCluster):
                return await cluster_script(client, script, keys, args)
            return await script(keys=keys, args=args)
        run = self._wait.runner(durable)
        if isinstance(client, RedisCluster):
            return await cluster_script(client, script, keys, args, run)
        return await script_on_one_connection(client, script, keys, args, run)
