"""Script calls as raw commands on one connection: the EVALSHA/EVAL shapes, every answer read, errors surfaced."""

from __future__ import annotations

import hashlib

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sidecar.store.redis_commands import (
    eval_command,
    evalsha_command,
    exchange,
    last_answer,
    reply_text,
    run_plainly,
)
from tests.unit.store.fake_connection import FakeConnection

SOURCE = "return redis.call('GET', KEYS[1])"


def script() -> object:
    # Registering computes the SHA locally; nothing connects.
    return aioredis.Redis(host="127.0.0.1", port=1).register_script(SOURCE)


def test_evalsha_names_the_script_by_its_sha1_and_counts_the_keys() -> None:
    command = evalsha_command(script(), ["k1", "k2"], ["a", 7])  # type: ignore[arg-type]
    assert command == ("EVALSHA", hashlib.sha1(SOURCE.encode()).hexdigest(), 2, "k1", "k2", "a", 7)


def test_eval_carries_the_source_for_a_server_that_lacks_the_script() -> None:
    assert eval_command(script(), ["k1"], [b"x"]) == ("EVAL", SOURCE, 1, "k1", b"x")  # type: ignore[arg-type]


async def test_exchange_writes_the_commands_at_once_and_reads_an_answer_for_each() -> None:
    refused = ResponseError("NOSCRIPT No matching script")
    fake = FakeConnection(refused, b"OK", 3)
    answers = await exchange(fake.connection, [("ASKING",), ("EVALSHA", "sha", 0), ("PING",)])
    assert fake.sent == [[("ASKING",), ("EVALSHA", "sha", 0), ("PING",)]]
    # The answers after an error are read all the same: nothing is left pending on the connection.
    assert answers == [refused, b"OK", 3]
    assert fake.replies == []


def test_last_answer_is_the_last_commands_answer() -> None:
    assert last_answer([b"OK", 1]) == 1


def test_last_answer_raises_the_first_error_whichever_command_got_it() -> None:
    first, second = ResponseError("first"), ResponseError("second")
    with pytest.raises(ResponseError, match="first"):
        last_answer([b"OK", first, second, 1])


async def test_run_plainly_answers_the_script_after_asking() -> None:
    fake = FakeConnection(b"OK", [b"d", b"1"])
    assert await run_plainly(fake.connection, [("ASKING",), ("EVAL", SOURCE, 0)]) == [b"d", b"1"]


async def test_run_plainly_raises_the_error_reply() -> None:
    fake = FakeConnection(ResponseError("ASK 1234 127.0.0.1:7001"), b"never mind")
    with pytest.raises(ResponseError, match="ASK"):
        await run_plainly(fake.connection, [("EVALSHA", "sha", 0), ("PING",)])


def test_reply_text_keeps_bytes_that_are_not_utf8_instead_of_raising() -> None:
    assert reply_text(b"caf\xe9") == "caf\udce9"
    assert reply_text(b"noeviction") == "noeviction"
    assert reply_text(42) == "42"
