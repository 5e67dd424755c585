"""The clean-ups of ``serve``, each bounded: a stop that never finishes must not keep the process from exiting.

Every async clean-up pushed on a ``BoundedStops`` runs as its own task and is left after ``STEP_SECONDS`` with a
warning naming it; the next clean-up runs all the same. Client libraries can swallow a cancellation (redis-py's
pubsub read took one and kept reading: `serve` then never exited after SIGTERM), so a stop is never awaited
without a bound, and a task that ignores its cancellation is left to the process's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("sidecar")

# Above the gRPC servers' drain (SHUTDOWN_GRACE_SECONDS, 5 s) and the invalidation listener's own bound (3 s).
STEP_SECONDS = 7.0


def _name(callback: Callable[..., Any]) -> str:
    owner = getattr(callback, "__self__", None)
    qualname = getattr(callback, "__qualname__", None) or repr(callback)
    return f"{type(owner).__name__}.{callback.__name__}" if owner is not None else qualname


class BoundedStops(contextlib.AsyncExitStack):
    def __init__(self, seconds: float = STEP_SECONDS) -> None:
        super().__init__()
        self._seconds = seconds

    def push_async_callback(
        self, callback: Callable[..., Awaitable[Any]], /, *args: Any, **kwds: Any
    ) -> Callable[..., Awaitable[Any]]:
        name, seconds = _name(callback), self._seconds

        async def bounded() -> None:
            task = asyncio.ensure_future(callback(*args, **kwds))
            done, _ = await asyncio.wait({task}, timeout=seconds)
            if not done:
                task.cancel()
                log.warning("shutdown: %s did not finish within %.0fs; going on without it", name, seconds)
                return
            if not task.cancelled() and (error := task.exception()) is not None:
                log.error("shutdown: %s failed: %s", name, error)

        super().push_async_callback(bounded)
        return callback


# What the tasks still pending when ``serve`` returns get to finish their cancellation.
LEFTOVER_SECONDS = 2.0


def run_bounded(main: Awaitable[Any], leftover_seconds: float = LEFTOVER_SECONDS) -> Any:
    """``asyncio.run(main)``, but the tasks still pending when ``main`` returns get ``leftover_seconds`` to end
    once cancelled, not for ever: asyncio.run gathers them without a bound, so one that swallows its cancellation
    (a client library's read) would keep the process from exiting."""
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=leftover_seconds))
                if stuck:
                    log.warning("shutdown: %d task(s) ignored their cancellation; exiting without them", len(stuck))
            loop.run_until_complete(loop.shutdown_asyncgens())
            with contextlib.suppress(TimeoutError):  # its threads' own waits are bounded; this one is too
                loop.run_until_complete(asyncio.wait_for(loop.shutdown_default_executor(), leftover_seconds * 2))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
