"""The HTTP listener (``httpserver.listener``): the connection limit, stopping with a grace period, and the descriptor
budget the listeners share."""

from __future__ import annotations

import asyncio
import resource
import time

import pytest

from sidecar.httpserver.listener import DESCRIPTOR_SHARE, connection_limit, raise_open_files_limit
from tests.support.http_wire import Problems, Served, closed, read_response, request, serving


async def test_stop_closes_idle_connections_and_finishes_answers_in_flight(served: Served) -> None:
    issued = await served.manager.create("alice")
    slow = asyncio.Event()
    original = served.store.resolve

    async def resolve(*args: object) -> object:
        slow.set()
        await asyncio.sleep(0.1)  # within the store deadline (0.15 s)
        return await original(*args)  # type: ignore[arg-type]

    served.store.resolve = resolve  # type: ignore[method-assign]
    idle_reader, idle_writer = await served.connect()
    busy_reader, busy_writer = await served.connect()
    busy_writer.write(request("/hello", ("cookie", f"SESSION={issued.token}")))
    await slow.wait()
    stopping = asyncio.create_task(served.server.stop(2.0))
    assert await closed(idle_reader)
    response = await read_response(busy_reader)
    assert (response.status, response.header("connection")) == (200, "close")
    assert response.header("x-user-id") == "alice"
    await stopping
    with pytest.raises((ConnectionError, OSError)):
        await served.connect()
    idle_writer.close()
    busy_writer.close()


async def test_connections_over_max_connections_are_closed_at_once_and_the_others_answered(
    problems: Problems,
) -> None:
    async with serving(problems, max_connections=3) as running:
        held = [await running.connect() for _ in range(3)]
        for reader, writer in held:
            writer.write(request("/public/x"))
            assert (await read_response(reader)).status == 200
        extra_reader, extra_writer = await running.connect()
        assert await closed(extra_reader)  # refused: accepted and closed, so it holds no descriptor
        extra_writer.close()
        held[0][1].close()
        deadline = time.monotonic() + 5
        while running.server.connections > 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (await running.ask("/public/x")).status == 200
        for reader, writer in held[1:]:
            writer.write(request("/public/x"))
            assert (await read_response(reader)).status == 200
            writer.close()


def test_the_connection_limit_is_a_share_of_the_open_files_limit_and_the_soft_limit_can_be_raised() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 512:
        pytest.skip("the hard open-files limit is too low to lower and raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert connection_limit(1000) == 256 // DESCRIPTOR_SHARE
        assert connection_limit(10) == 10
        before, after = raise_open_files_limit()
        assert before == 256
        assert after == (None if hard == resource.RLIM_INFINITY else hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_the_address_of_a_listener_that_is_not_listening_is_an_error_naming_it(problems: Problems) -> None:
    async with serving(problems) as running:
        listener = running.server
    with pytest.raises(RuntimeError, match=r"listen\.http is not listening"):
        _ = listener.address
