"""A stand-in for redis-py's asyncio Connection: records what is written, answers from a script of replies."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from redis.asyncio.connection import Connection

FOREVER = object()  # a reply that never comes


class FakeConnection:
    def __init__(self, *replies: object, socket_timeout: float | None = 0.01) -> None:
        self.replies = list(replies)
        self.sent: list[list[tuple[Any, ...]]] = []  # one entry per write, the commands written together
        self.read_timeouts: list[float | None] = []
        self.socket_timeout = socket_timeout

    def pack_commands(self, commands: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return list(commands)

    def pack_command(self, *args: Any) -> list[tuple[Any, ...]]:
        return [args]

    async def send_packed_command(self, packed: list[tuple[Any, ...]]) -> None:
        self.sent.append(packed)

    async def read_response(self, timeout: float | None = None) -> object:  # noqa: ASYNC109 (redis-py's signature)
        self.read_timeouts.append(timeout)
        reply = self.replies.pop(0)
        if reply is FOREVER:
            await asyncio.Event().wait()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    @property
    def connection(self) -> Connection:
        """This fake typed as the Connection the code under test takes."""
        return cast(Connection, self)
