"""A write known on a replica: WAIT for its acknowledgement on the connection that wrote it.

WAIT counts the replicas that acknowledged the last write of the connection it goes out on, and redis-py takes a
connection from the pool for each command (a Cluster node's pool hands them out in turn): so a durable write runs
as the script and INFO written together, then WAIT, all on one connection.

That a WAIT after a replay still covers the first run's change rests on the scripts (see ``redis_scripts``).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.errors import StoreUnavailable
from sidecar.store.redis_commands import (
    Command,
    Runner,
    ScriptArg,
    eval_command,
    evalsha_command,
    exchange,
    last_answer,
    reply_text,
)


def connected_replicas(info: object) -> int:
    """``connected_slaves`` from an INFO replication answer (0 when it is missing)."""
    for line in reply_text(info).splitlines():
        name, _, value = line.partition(":")
        if name == "connected_slaves":
            return int(value)
    return 0


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    """How many replicas must acknowledge a waited write (never more than are connected), and for how long."""

    replicas: int
    timeout_ms: int
    description: str  # the store, as its errors name it

    def runner(self, durable: Callable[[Any], bool]) -> Runner:
        """Runs a script call, then waits for replicas when ``durable`` says so of the script's answer."""
        return functools.partial(self._run, durable=durable)

    async def _run(self, connection: Connection, commands: list[Command], durable: Callable[[Any], bool]) -> Any:
        """``commands`` and INFO on ``connection``, then, when ``durable`` says so of the answer, WAIT for a replica's
        acknowledgement on the same connection (when any replica is connected); StoreUnavailable when too few do."""
        answers = await exchange(connection, [*commands, ("INFO", "replication")])
        answer = last_answer(answers[:-1])
        if not durable(answer):
            return answer
        wanted = min(self.replicas, connected_replicas(last_answer(answers)))
        if wanted == 0:
            return answer
        await connection.send_packed_command(connection.pack_command("WAIT", wanted, self.timeout_ms))
        # The server answers after at most the wait: the socket timeout (often shorter) bounds only the rest. A
        # WAIT timed out and sent again on a new connection would count nothing, as that connection wrote nothing.
        limit = (connection.socket_timeout or 0) + self.timeout_ms / 1000
        try:
            async with asyncio.timeout(limit):
                acknowledged = int(await connection.read_response(timeout=math.inf))
        except TimeoutError:  # the read was cancelled, which disconnected the connection: no answer is left pending
            raise RedisTimeoutError(f"no answer to WAIT within {limit:.2f}s") from None
        if acknowledged < wanted:
            raise StoreUnavailable(
                f"{self.description}: the change was made on the primary but only {acknowledged} of {wanted} "
                f"replica(s) acknowledged it within {self.timeout_ms}ms; retry to be sure it survives a failover"
            )
        return answer


async def script_on_one_connection(
    client: aioredis.Redis, script: AsyncScript, keys: list[str], args: list[ScriptArg], run: Runner
) -> Any:
    """``script`` run by ``run`` on one connection of a standalone (or Sentinel) client's pool."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        # Like redis-py's own commands: a connection or timeout error disconnects and the whole call is
        # repeated (a replay answers what the first run did, and writes, see redis_scripts._REVOKE).
        return await connection.retry.call_with_retry(
            lambda: _script_on(connection, script, keys, args, run),
            lambda _error: connection.disconnect(),
        )
    finally:
        await pool.release(connection)


async def _script_on(
    connection: Connection, script: AsyncScript, keys: list[str], args: list[ScriptArg], run: Runner
) -> Any:
    try:
        return await run(connection, [evalsha_command(script, keys, args)])
    except NoScriptError:
        return await run(connection, [eval_command(script, keys, args)])
