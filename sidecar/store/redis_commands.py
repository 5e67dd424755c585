"""A script call as raw commands written together on one connection, and their answers.

The Cluster ASK workaround (``redis_cluster``) and the replica acknowledgement (``redis_durable``) both need a
command to go out on a connection they chose, with ASKING, INFO or WAIT beside it, which redis-py's per-command
connection choice cannot promise: they build their commands here and run them with ``exchange``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

ScriptArg = bytes | str | int | float
Command = tuple[ScriptArg, ...]
# Runs a script call (after ASKING inside an ASK window) on one connection; the script's answer.
Runner = Callable[[Connection, list[Command]], Awaitable[Any]]


def reply_text(value: object) -> str:
    """A reply as text; bytes that are not UTF-8 survive as surrogates (a planted value must not raise here)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def evalsha_command(script: AsyncScript, keys: list[str], args: list[ScriptArg]) -> Command:
    return ("EVALSHA", script.sha, len(keys), *keys, *args)


def eval_command(script: AsyncScript, keys: list[str], args: list[ScriptArg]) -> Command:
    """The call with the script's source, for a server that has not cached it (NOSCRIPT); EVAL caches it there."""
    source = script.script if isinstance(script.script, str | bytes) else bytes(script.script)
    return ("EVAL", source, len(keys), *keys, *args)


async def exchange(connection: Connection, commands: list[Command]) -> list[Any]:
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


def last_answer(answers: list[Any]) -> Any:
    """The last command's answer, or the first error any of them got."""
    for answer in answers:
        if isinstance(answer, ResponseError):
            raise answer
    return answers[-1]


async def run_plainly(connection: Connection, commands: list[Command]) -> Any:
    """A Runner that only runs the commands: the last one's answer."""
    return last_answer(await exchange(connection, commands))
