"""The invalidation listener's own lifecycle, on a scripted client (the channel itself is tested on real Redis in
tests/integration/test_invalidation.py and the contract suite's cached variants)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.store import invalidation
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


class SwallowingPubSub(HangingPubSub):
    """Takes ``swallowed`` cancellations inside its read for its own timeout and goes on reading (as redis-py's
    pubsub can), then lets the next one through; closing it is quick."""

    def __init__(self, swallowed: int) -> None:
        super().__init__()
        self.swallowed = swallowed

    async def get_message(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109 - redis-py's signature
        if self.subscribed:
            self.subscribed = False
            return {"type": "subscribe", "data": 1}
        try:
            await asyncio.sleep(timeout)
        except asyncio.CancelledError:
            if self.swallowed == 0:
                raise
            self.swallowed -= 1
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        return None

    async def aclose(self) -> None:
        return None


class SwallowingClient(Client):
    def __init__(self, swallowed: int) -> None:
        self.swallowed = swallowed
        self.opened: list[SwallowingPubSub] = []

    def pubsub(self) -> SwallowingPubSub:
        self.opened.append(SwallowingPubSub(self.swallowed))
        return self.opened[-1]


async def test_stop_repeats_a_cancellation_the_client_library_swallowed() -> None:
    target = Target()
    listener = InvalidationListener(SwallowingClient(2), "ch", target, ping_interval=10)  # type: ignore[arg-type]
    listener.start()
    await asyncio.wait_for(listener.connected.wait(), 2)
    stopping = asyncio.ensure_future(listener.stop())
    done, _ = await asyncio.wait({stopping}, timeout=2)
    assert done, "stop() waits for ever on a listener that took its one cancellation"
    assert not target.live  # it did stop: the channel is lost, the cache off


async def test_stop_gives_up_on_a_listener_that_never_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(invalidation, "STOP_TIMEOUT_SECONDS", 0.5)
    client = SwallowingClient(10**6)
    listener = InvalidationListener(client, "ch", Target(), ping_interval=10)  # type: ignore[arg-type]
    listener.start()
    await asyncio.wait_for(listener.connected.wait(), 2)
    stopping = asyncio.ensure_future(listener.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    assert done, "stop() is not bounded"
    client.opened[-1].swallowed = 0  # the test's own clean-up: the next cancellation goes through
    await listener.stop()
