"""The store's scripts on a Redis Cluster: to the slot's primary, through the ASK window of a slot migration.

While a slot migrates, its source answers ASK for the keys already moved, and the target serves them only to a
connection that sent ASKING right before the command. redis-py 8.1.0's asyncio RedisCluster._execute_command sends
ASKING with one ClusterNode.execute_command call and the command with another, and each call takes a connection
from the node's free deque (acquire_connection: ``_free.popleft()``; release: ``_free.append()``, so FIFO): once
the client holds two or more idle connections to the target, the command goes out on a connection that did not
send ASKING, the target answers MOVED back to the source (still the slot's owner), which ASKs again, until the 16
rounds of RedisClusterRequestTTL run out: ClusterError('TTL exhausted.'), a 503 for a live session; the MOVED
storm also makes the client reinitialise, closing connections other requests are using. So on a Cluster the
store's scripts go to the slot's primary from here, and an ASK is followed by ASKING and the command written
together on one connection. Anything but an ASK, a TRYAGAIN or the script's own answer goes back to redis-py's
path (slot-map refresh, reconnects, retries). Drop this once redis-py sends ASKING on the command's connection
(tests/integration/test_redis_store.py::test_cluster_reads_answer_inside_an_ask_window fails without it).

TRYAGAIN is Redis Cluster's own rule, not a client bug: a node refuses a multi-key command on a migrating slot
while some of its keys are missing. Every write script names a key that does not exist yet (the new session, the
outcome key), so writes wait here for the slot to settle (TRYAGAIN_WAITS x TRYAGAIN_PAUSE), then fail unapplied.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.store.redis_commands import Command, Runner, ScriptArg, eval_command, evalsha_command, run_plainly

ASK_ROUNDS = 5  # ASK redirects (and NOSCRIPT answers) in a row followed here before handing the call to redis-py
TRYAGAIN_WAITS = 10
TRYAGAIN_PAUSE = 0.03
TRYAGAIN_WAITED = TRYAGAIN_WAITS * TRYAGAIN_PAUSE  # how long a write waits for a migrating slot before it fails


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
    evalsha = evalsha_command(script, keys, args)
    # The ASK target may never have run the script: EVAL carries it (and caches it there).
    eval_ = eval_command(script, keys, args)
    try:
        node: ClusterNode | None = client.get_node_from_key(keys[0])
    except RedisClusterException:  # no slot map yet: redis-py's path builds it
        node = None
    command, asking, rounds, waits = evalsha, False, ASK_ROUNDS, TRYAGAIN_WAITS
    while node is not None and rounds > 0:
        try:
            if asking:
                return (await _on_node(node, [("ASKING",), eval_], run or run_plainly),)
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


async def cluster_script(
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
