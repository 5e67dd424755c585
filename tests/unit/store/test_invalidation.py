"""The invalidation listener's own lifecycle, on a scripted client (the channel itself is tested on real Redis in
tests/integration/test_invalidation.py and the contract suite's cached variants)."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.store.invalidation import InvalidationListener


class HangingPubSub:
    """Subscribes, then hears nothing; closing it never finishes (a connection nobody answers any more)."""

    def __init__(self) -> None:
        self.subscribed = False

    async def subscribe(self, channel: str) -> None:
        self.subscribed = True

    async def ping(self) -> None:
        return None

    async def get_message(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109 - redis-py's signature
        if self.subscribed:
            self.subscribed = False
            return {"type": "subscribe", "data": 1}
        await asyncio.sleep(timeout)
        return {"type": "pong", "data": b""}

    async def aclose(self) -> None:
        await asyncio.Event().wait()


class Client:
    def pubsub(self) -> HangingPubSub:
        return HangingPubSub()

    async def ping(self) -> bool:
        return True


class Target:
    live = False

    def invalidate(self, digests: tuple[str, ...]) -> None: ...

    def set_live(self, live: bool) -> None:
        self.live = live


async def test_stop_returns_even_when_closing_the_subscription_never_does() -> None:
    target = Target()
    listener = InvalidationListener(Client(), "ch", target, ping_interval=0.05)  # type: ignore[arg-type]
    listener.start()
    await asyncio.wait_for(listener.connected.wait(), 2)
    assert target.live
    stopping = asyncio.ensure_future(listener.stop())
    done, _ = await asyncio.wait({stopping}, timeout=4)  # unlike wait_for, never cancels it on the timeout
    assert done, "stop() still waits on closing the subscription"  # before: for ever
    assert not target.live
