"""serve's clean-ups are bounded: a stop that never ends, or a task that swallows its cancellation, cannot keep
the process from exiting."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from sidecar.shutdown import BoundedStops, run_bounded


async def _never() -> None:
    await asyncio.Event().wait()


SWALLOWING = {"on": True}  # the tests turn it off to let their own loop end


async def _swallowing_forever() -> None:
    """Like a client library's read that takes every cancellation for its own timeout and reads on."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not SWALLOWING["on"]:
                raise
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()


@pytest.fixture(autouse=True)
def swallowing() -> None:
    SWALLOWING["on"] = True


async def _let_leftovers_end() -> None:
    SWALLOWING["on"] = False
    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    await asyncio.wait(leftovers, timeout=2)


async def test_a_stop_that_never_ends_is_left_and_the_next_one_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    async def first() -> None:
        ran.append("first")

    async def failing() -> None:
        raise RuntimeError("boom")

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        async with BoundedStops(seconds=0.3) as stops:
            stops.push_async_callback(first)  # runs last (a stack)
            stops.push_async_callback(failing)
            stops.push_async_callback(_swallowing_forever)
            stops.push_async_callback(_never)
    took = time.monotonic() - started
    await _let_leftovers_end()
    assert ran == ["first"]
    assert took < 2
    assert "_never did not finish within" in caplog.text
    assert "_swallowing_forever did not finish within" in caplog.text
    assert "failing failed: boom" in caplog.text


def test_run_bounded_returns_though_a_task_left_behind_ignores_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> str:
        asyncio.get_running_loop().create_task(_swallowing_forever())
        await asyncio.sleep(0.05)
        return "served"

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="sidecar"):
        assert run_bounded(main(), leftover_seconds=0.3) == "served"
    assert time.monotonic() - started < 2  # asyncio.run would wait for that task for ever
    assert "1 task(s) ignored their cancellation" in caplog.text


def test_run_bounded_cancels_tasks_left_behind_that_do_end() -> None:
    ended: list[str] = []

    async def cleans_up() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("cleaned up")

    async def main() -> None:
        asyncio.get_running_loop().create_task(cleans_up())
        await asyncio.sleep(0.05)

    run_bounded(main(), leftover_seconds=1)
    assert ended == ["cleaned up"]
