"""The invalidation channel: a subscription that evicts cache entries the moment any replica revokes them.

The store's scripts PUBLISH the token hash of every session they delete or move. This listener keeps one
subscription open, and the cache serves hits only while it is verifiably connected: a dropped connection, or a
PING that is not answered within ``liveness_timeout``, flushes the cache and turns it off until the subscription
is back (a partition never leaves a stale allow behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from sidecar.store.cache import SessionCache
from sidecar.store.connect import RedisClient

log = logging.getLogger("sidecar.cache")


class InvalidationListener:
    def __init__(
        self,
        client: RedisClient,
        channel: str,
        cache: SessionCache,
        *,
        ping_interval: float = 1.0,
        liveness_timeout: float = 2.5,
        retry_interval: float = 0.5,
    ) -> None:
        self._client = client
        self._channel = channel
        self._cache = cache
        self._ping_interval = ping_interval
        self._liveness_timeout = liveness_timeout
        self._retry_interval = retry_interval
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.subscriptions = 0

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "message":
            data = message.get("data")
            digest = data.decode("ascii", "replace") if isinstance(data, bytes) else str(data)
            self._cache.invalidate((digest,))

    async def _listen_once(self) -> None:
        if isinstance(self._client, RedisCluster):
            # ClusterPubSub picks its node from the slots map: make sure there is one before subscribing.
            await self._client.initialize()
        pubsub: Any = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            loop = asyncio.get_running_loop()
            last_heard = loop.time()
            next_ping = loop.time()
            while True:
                now = loop.time()
                if now >= next_ping:
                    await pubsub.ping()
                    next_ping = now + self._ping_interval
                message = await pubsub.get_message(timeout=self._ping_interval / 2)
                if message is not None:
                    last_heard = loop.time()
                    if message.get("type") == "subscribe":
                        # Also after a reconnect the client library made on its own: whatever was published
                        # while the connection was down is lost, so nothing cached before is trusted.
                        self._cache.set_live(True)
                        self.subscriptions += 1
                        self.connected.set()
                        log.info("invalidation channel %s (re)subscribed: cache flushed and on", self._channel)
                    self._handle(message)
                elif loop.time() - last_heard > self._liveness_timeout:
                    raise TimeoutError(f"no answer on the invalidation channel for {self._liveness_timeout:.1f}s")
        finally:
            if self._cache.live:
                log.warning("invalidation channel %s lost: cache flushed and off", self._channel)
            self._cache.set_live(False)
            self.connected.clear()
            with contextlib.suppress(RedisError, OSError, RuntimeError):
                await pubsub.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_once()
            except (RedisError, OSError, TimeoutError) as exc:
                log.debug("invalidation channel error: %s", exc)
            except Exception:
                # The client library can fail in other ways (e.g. a cluster without a slots map yet); the listener
                # must outlive them: the cache is already off (finally above), so retrying is always safe.
                log.exception("invalidation channel failed unexpectedly; retrying")
            await asyncio.sleep(self._retry_interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
