"""The configured ``sources`` list as session sources, in order: the native one as given, every other kind read
from its own Redis (``redis`` of the entry) or the sidecar's."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sidecar.config import Config
from sidecar.config.models.sources import SourceRedisConfig
from sidecar.core.redact import redact_url
from sidecar.sources import kinds
from sidecar.sources.base import SessionSource
from sidecar.sources.framework import FrameworkSource
from sidecar.sources.redis_reader import RedisReader
from sidecar.sources.spring import SpringSessionSource
from sidecar.store.connect import RedisClient, RedisSettings, open_client

Closer = Callable[[], Awaitable[None]]


def configured_sources(
    config: Config, native: SessionSource, shared: RedisClient
) -> tuple[tuple[SessionSource, ...], list[Closer]]:
    """The sources in config order, and how to close the clients opened for them (an application's own Redis;
    one client per distinct ``redis`` entry)."""
    own = RedisReader(shared, f"redis at {redact_url(config.redis.url)}")
    readers: dict[SourceRedisConfig, RedisReader] = {}
    closers: list[Closer] = []
    sources: list[SessionSource] = []
    for entry in config.sources:
        if entry.kind == kinds.NATIVE:
            sources.append(native)
            continue
        reader = own
        if entry.redis is not None:
            if entry.redis not in readers:
                client = open_client(
                    RedisSettings(
                        url=entry.redis.url,
                        timeout=entry.redis.timeout,
                        username=entry.redis.username or None,
                        password=entry.redis.password or None,
                    )
                )
                closers.append(client.aclose)
                readers[entry.redis] = RedisReader(client, f"{entry.kind} redis at {redact_url(entry.redis.url)}")
            reader = readers[entry.redis]
        settings = entry.settings()
        if entry.kind == kinds.SPRING:
            sources.append(SpringSessionSource(settings, reader))
        else:
            build = kinds.FRAMEWORKS[entry.kind][1]
            sources.append(FrameworkSource(build(settings), reader, settings.cookie))
    return tuple(sources), closers
