"""The store probe behind readiness: unready after consecutive failures, ready again after one success."""

from __future__ import annotations

import asyncio

from sidecar.errors import StoreUnavailable
from sidecar.health import FAILURES_TO_UNREADY, StoreHealth


class Pinger:
    def __init__(self) -> None:
        self.down = False
        self.slow = False

    async def __call__(self) -> None:
        if self.slow:
            await asyncio.sleep(5)
        if self.down:
            raise StoreUnavailable("down")


async def test_one_failed_ping_is_not_enough_to_turn_unready() -> None:
    pinger, changes = Pinger(), []

    async def record(ready: bool) -> None:
        changes.append(ready)

    health = StoreHealth(pinger, record, timeout=0.05)
    pinger.down = True
    assert await health.probe_once() is False
    assert health.ready and changes == []
    for _ in range(FAILURES_TO_UNREADY - 1):
        await health.probe_once()
    assert not health.ready and changes == [False]
    await health.probe_once()
    assert changes == [False]  # reported once, not on every failure
    pinger.down = False
    assert await health.probe_once() is True
    assert health.ready and changes == [False, True]


async def test_a_ping_slower_than_the_timeout_counts_as_a_failure() -> None:
    pinger, changes = Pinger(), []

    async def record(ready: bool) -> None:
        changes.append(ready)

    health = StoreHealth(pinger, record, timeout=0.05)
    pinger.slow = True
    for _ in range(FAILURES_TO_UNREADY):
        await health.probe_once()
    assert changes == [False]


async def test_background_probe_runs_and_stops() -> None:
    pinger, changes = Pinger(), []

    async def record(ready: bool) -> None:
        changes.append(ready)

    pinger.down = True
    health = StoreHealth(pinger, record, interval=0.01, timeout=0.05)
    health.start()
    await asyncio.sleep(0.2)
    await health.stop()
    assert changes == [False]
