"""WAIT on the writing connection: sent only when the answer says the write must be known on a replica and a
replica is connected; too few acknowledgements refuse, a WAIT with no answer times out without being re-sent."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.errors import StoreUnavailable
from sidecar.store.redis_durable import ReplicaWait, connected_replicas
from tests.unit.store.fake_connection import FOREVER, FakeConnection

SCRIPT = ("EVALSHA", "sha", 1, "k")
INFO = ("INFO", "replication")


def info(replicas: int) -> bytes:
    return f"# Replication\r\nrole:master\r\nconnected_slaves:{replicas}\r\nmaster_repl_offset:42\r\n".encode()


def test_connected_replicas_is_read_from_info_replication() -> None:
    assert connected_replicas(info(3)) == 3


def test_no_connected_slaves_line_counts_as_no_replica() -> None:
    assert connected_replicas(b"# Replication\r\nrole:master\r\n") == 0


async def test_the_script_and_info_go_out_together_then_wait_on_the_same_connection() -> None:
    fake = FakeConnection(1, info(2), 1)
    wait = ReplicaWait(replicas=1, timeout_ms=50, description="redis://h:1/0")
    assert await wait.runner(bool)(fake.connection, [SCRIPT]) == 1
    assert fake.sent == [[SCRIPT, INFO], [("WAIT", 1, 50)]]


async def test_it_waits_for_no_more_replicas_than_are_connected() -> None:
    fake = FakeConnection(1, info(1), 1)
    await ReplicaWait(replicas=3, timeout_ms=50, description="r").runner(bool)(fake.connection, [SCRIPT])
    assert fake.sent[-1] == [("WAIT", 1, 50)]


async def test_no_wait_when_the_answer_is_not_one_to_wait_for() -> None:
    fake = FakeConnection(0, info(2))
    assert await ReplicaWait(1, 50, "r").runner(bool)(fake.connection, [SCRIPT]) == 0
    assert fake.sent == [[SCRIPT, INFO]]


async def test_no_wait_when_no_replica_is_connected() -> None:
    fake = FakeConnection(1, info(0))
    assert await ReplicaWait(1, 50, "r").runner(bool)(fake.connection, [SCRIPT]) == 1
    assert fake.sent == [[SCRIPT, INFO]]


async def test_a_script_error_is_raised_before_any_wait() -> None:
    fake = FakeConnection(ResponseError("NOSCRIPT No matching script"), info(2))
    with pytest.raises(ResponseError, match="NOSCRIPT"):
        await ReplicaWait(1, 50, "r").runner(bool)(fake.connection, [SCRIPT])
    assert fake.sent == [[SCRIPT, INFO]]


async def test_too_few_acknowledgements_refuse_naming_the_store_and_the_counts() -> None:
    fake = FakeConnection(1, info(2), 1)
    with pytest.raises(StoreUnavailable) as refused:
        await ReplicaWait(2, 50, "redis://h:1/0").runner(bool)(fake.connection, [SCRIPT])
    assert str(refused.value) == (
        "redis://h:1/0: the change was made on the primary but only 1 of 2 replica(s) acknowledged it within 50ms; "
        "retry to be sure it survives a failover"
    )


async def test_the_wait_reply_is_awaited_past_the_socket_timeout_then_times_out() -> None:
    fake = FakeConnection(1, info(1), FOREVER, socket_timeout=0.01)
    with pytest.raises(RedisTimeoutError, match=r"no answer to WAIT within 0\.03s"):
        await ReplicaWait(1, 20, "r").runner(bool)(fake.connection, [SCRIPT])
    # The WAIT read itself has no socket timeout: only the whole wait bounds it.
    assert fake.read_timeouts[-1] == float("inf")
