"""The invalidation channel: subscriptions that evict cache entries the moment any replica revokes them.

The store's scripts PUBLISH the token hash of every session they delete or move. The cache serves hits only
while every subscription is verifiably connected: a dropped connection, a PING not answered within
``liveness_timeout``, or a re-subscription the client library made on its own flushes the cache, and it stays off
until all subscriptions are back, so a partition never leaves a stale allow behind.

On a Cluster the listener subscribes on every primary: a PUBLISH is delivered by the node that ran the script to
its own subscribers first, so a stalled node (the one a single subscription would sit on) cannot hold back a
revocation made on a healthy one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from sidecar.store.connect import RedisClient

log = logging.getLogger("sidecar.cache")

PING_INTERVAL_SECONDS = 0.2
LIVENESS_TIMEOUT_SECONDS = 0.6
CLOSE_TIMEOUT_SECONDS = 1.0
STOP_TIMEOUT_SECONDS = 3.0  # stop() at most: then shutdown goes on (see stop)
STOP_RETRY_SECONDS = 0.2  # how long one cancellation is given before it is repeated


class Invalidated(Protocol):
    """What the channel keeps honest: a cache (``SessionCache``) or a cached source (``CachedSource``)."""

    @property
    def live(self) -> bool: ...

    def invalidate(self, digests: Iterable[str]) -> None: ...

    def set_live(self, live: bool) -> None:
        """Every subscription is up (True) or one is lost (False): either way nothing held before is trusted."""
        ...


@runtime_checkable
class KeepsLastKnown(Protocol):
    """A target that also keeps last known identities (failure_policy stale), which outlive a lost channel."""

    def resubscribed(self) -> None:
        """A subscription came back: the store answers, and something may have been published unseen."""
        ...

    def holds_last_known(self) -> bool: ...

    def forget_last_known(self) -> None:
        """The channel is lost while the store answers: a revocation may be going unseen."""
        ...


class InvalidationListener:
    def __init__(
        self,
        client: RedisClient,
        channel: str,
        target: Invalidated,
        *,
        ping_interval: float = PING_INTERVAL_SECONDS,
        liveness_timeout: float = LIVENESS_TIMEOUT_SECONDS,
        retry_interval: float = 0.5,
    ) -> None:
        self._client = client
        self._channel = channel
        self._target = target
        self._last_known = target if isinstance(target, KeepsLastKnown) else None
        self._ping_interval = ping_interval
        self._liveness_timeout = liveness_timeout
        self._retry_interval = retry_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._up: set[int] = set()
        self._sources = 1
        self.connected = asyncio.Event()
        self.subscriptions = 0
        self._checks: set[asyncio.Task[None]] = set()
        self._ever: set[int] = set()

    def _handle(self, message: dict[str, Any]) -> None:
        if message.get("type") == "message":
            data = message.get("data")
            digest = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
            self._target.invalidate((digest,))

    def _subscribed(self, source: int) -> None:
        self.subscriptions += 1
        if source in self._ever and self._last_known is not None:
            # A re-subscription (possibly one the client library made on its own) proves the store answers again
            # and that something may have been published unseen: last known identities are not needed, nor safe.
            self._last_known.resubscribed()
        self._ever.add(source)
        self._up.add(source)
        if len(self._up) == self._sources:
            # Also after a reconnect the client library made on its own: whatever was published while a
            # connection was down is lost, so nothing cached before is trusted.
            self._target.set_live(True)
            self.connected.set()
            log.info("invalidation channel %s subscribed (%d connection(s)): cache on", self._channel, self._sources)

    def _lost(self, source: int) -> None:
        self._up.discard(source)
        if self._target.live:
            log.warning("invalidation channel %s lost: cache flushed and off", self._channel)
            if self._last_known is not None and self._last_known.holds_last_known():
                self._checks.add(task := asyncio.get_running_loop().create_task(self._forget_if_store_answers()))
                task.add_done_callback(self._checks.discard)
        self._target.set_live(False)
        self.connected.clear()

    async def _forget_if_store_answers(self) -> None:
        """A channel lost while the store still answers may have missed a revocation: forget the stale identities.
        When the store is down too, nobody could revoke meanwhile, and they stay usable."""
        try:
            async with asyncio.timeout(self._liveness_timeout):
                await self._client.ping()
        except Exception:
            log.info("store unreachable with the invalidation channel: last known identities kept")
            return
        if self._last_known is not None:
            self._last_known.forget_last_known()
            log.warning("invalidation channel lost while the store answers: last known identities forgotten")

    async def _listen_once(self, source: int, open_pubsub: Callable[[], Any]) -> None:
        pubsub: Any = open_pubsub()
        try:
            await pubsub.subscribe(self._channel)
            loop = asyncio.get_running_loop()
            last_heard = next_ping = loop.time()
            while True:
                now = loop.time()
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + self._ping_interval
                message = await pubsub.get_message(timeout=self._ping_interval / 2)
                if message is not None:
                    last_heard = loop.time()
                    if message.get("type") == "subscribe":
                        self._subscribed(source)
                    self._handle(message)
                elif loop.time() - last_heard > self._liveness_timeout:
                    raise TimeoutError(f"no answer on the invalidation channel for {self._liveness_timeout:.1f}s")
        finally:
            self._lost(source)
            # Bounded: this also runs when stop() cancels the listener, and a close that waits on a connection
            # nobody answers any more would keep stop() (and the process's shutdown) waiting with it.
            with contextlib.suppress(RedisError, OSError, RuntimeError, TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await pubsub.aclose()

    async def _keep_listening(self, source: int, open_pubsub: Callable[[], Any]) -> None:
        while True:
            try:
                await self._listen_once(source, open_pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("invalidation channel error: %s", exc)
            except Exception:
                # The client library can fail in other ways; the listener must outlive them: the cache is already
                # off (see _lost), so retrying is always safe.
                log.exception("invalidation channel failed unexpectedly; retrying")
            await asyncio.sleep(self._retry_interval)

    async def _run(self) -> None:
        client = self._client
        if not isinstance(client, RedisCluster):
            await self._keep_listening(0, client.pubsub)
            return
        while True:
            try:
                await client.initialize()  # the primaries come from the slots map
                primaries = client.get_primaries()
                break
            except Exception as exc:  # a cluster that is not reachable yet: the cache stays off meanwhile
                log.debug("cluster not ready for the invalidation channel: %s", exc)
                await asyncio.sleep(self._retry_interval)
        self._sources = len(primaries)
        await asyncio.gather(
            *(self._keep_listening(i, functools.partial(client.pubsub, node=node)) for i, node in enumerate(primaries))
        )

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._run())]

    async def stop(self) -> None:
        """Cancel the listener, bounded: a cancellation the client library swallows (redis-py's pubsub can take one
        for its own read timeout and go on reading) is repeated, and after STOP_TIMEOUT_SECONDS the rest is left
        to the loop's end rather than holding the process's shutdown for ever."""
        pending = {*self._tasks, *self._checks}
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT_SECONDS
        attempts = 0
        while pending:
            attempts += 1
            if attempts == 2:
                log.info("invalidation listener ignored its cancellation; repeating it")
            for task in pending:
                task.cancel()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                log.warning("invalidation listener did not stop within %.0fs; leaving it", STOP_TIMEOUT_SECONDS)
                return
            done, pending = await asyncio.wait(pending, timeout=min(left, STOP_RETRY_SECONDS))
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: an error on the way out is no news
