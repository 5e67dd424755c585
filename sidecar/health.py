"""Readiness: a background probe of the store that drives gRPC health and the admin /readyz.

The sidecar keeps answering while the store is down (503 denials, public routes up), but it is not *ready*:
the probe marks it NOT_SERVING after ``FAILURES_TO_UNREADY`` failed pings in a row and SERVING again after one
success, so an orchestrator can route around a replica that has lost its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sidecar.errors import StoreError

log = logging.getLogger("sidecar.health")

PROBE_INTERVAL_SECONDS = 1.0
FAILURES_TO_UNREADY = 2


class StoreHealth:
    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        on_change: Callable[[bool], Awaitable[None]],
        *,
        interval: float = PROBE_INTERVAL_SECONDS,
        timeout: float = 0.5,
    ) -> None:
        self._ping = ping
        self._on_change = on_change
        self._interval = interval
        self._timeout = timeout
        self._failures = 0
        self.ready = True
        self._task: asyncio.Task[None] | None = None

    async def probe_once(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._ping()
        except (StoreError, TimeoutError) as exc:
            self._failures += 1
            if self.ready and self._failures >= FAILURES_TO_UNREADY:
                log.warning("store unreachable (%s): reporting NOT_SERVING", exc or "timed out")
                self.ready = False
                await self._on_change(False)
            return False
        self._failures = 0
        if not self.ready:
            log.info("store reachable again: reporting SERVING")
            self.ready = True
            await self._on_change(True)
        return True

    async def _run(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
