"""The whole configuration: one model per section, and the rules that span sections."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from sidecar.config.models.api import ApiConfig
from sidecar.config.models.assertion import AssertionConfig
from sidecar.config.models.base import Problem, Problems, Section
from sidecar.config.models.headers import IDENTITY_HEADERS, HeadersConfig
from sidecar.config.models.listen import ForwardAuthConfig, ListenConfig
from sidecar.config.models.log import LogConfig
from sidecar.config.models.routes import MAX_ROUTES, DenyConfig, RouteConfig
from sidecar.config.models.session import CookieConfig, SessionConfig, TokenConfig
from sidecar.config.models.sources import MAX_SOURCES, SourceConfig, checked_sources
from sidecar.config.models.store import CacheConfig, RedisConfig


def at_most(value: Any, limit: int, what: str, hint: str = "") -> Any:
    """A list key's raw value, refused when longer than ``limit`` before any item is validated: 200,000 routes
    took a minute and a gigabyte to refuse one by one."""
    if isinstance(value, list | tuple) and len(value) > limit:
        raise ValueError(f"at most {limit:,} {what} (got {len(value):,}){hint}")
    return value


class Config(Section):
    listen: ListenConfig = Field(default_factory=ListenConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    cookie: CookieConfig = Field(default_factory=CookieConfig)
    session: SessionConfig = Field(default_factory=SessionConfig)
    headers: HeadersConfig = Field(default_factory=HeadersConfig)
    deny: DenyConfig = Field(default_factory=DenyConfig)
    routes: tuple[RouteConfig, ...] = ()
    token: TokenConfig = Field(default_factory=TokenConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    assertion: AssertionConfig = Field(default_factory=AssertionConfig)
    forward_auth: ForwardAuthConfig = Field(default_factory=ForwardAuthConfig)
    sources: tuple[SourceConfig, ...] = (SourceConfig(kind="native"),)

    @field_validator("sources", mode="before")
    @classmethod
    def _bounded_sources(cls, value: Any) -> Any:
        return at_most(value, MAX_SOURCES, "sources")

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: tuple[SourceConfig, ...]) -> tuple[SourceConfig, ...]:
        return checked_sources(value)

    @field_validator("routes", mode="before")
    @classmethod
    def _bounded_routes(cls, value: Any) -> Any:
        return at_most(value, MAX_ROUTES, "routes", "; use prefixes that cover more paths")

    @field_validator("routes")
    @classmethod
    def _distinct_routes(cls, value: tuple[RouteConfig, ...]) -> tuple[RouteConfig, ...]:
        first: dict[str, int] = {}
        problems: list[Problem] = []
        for i, route in enumerate(value):
            if route.prefix in first:
                problems.append(((i, "prefix"), f"duplicate of routes[{first[route.prefix]}].prefix"))
            first.setdefault(route.prefix, i)
        if problems:
            raise Problems(problems)
        return value

    @model_validator(mode="after")
    def _assertion_header_is_stripped(self) -> Config:
        header, headers = self.assertion.header, self.headers
        if not self.assertion.enabled:
            return self
        if not header.startswith(headers.strip_prefixes):
            listed = ", ".join(headers.strip_prefixes)
            raise Problems(
                [
                    (
                        ("assertion", "header"),
                        f"{header!r} does not start with any of headers.strip_prefixes ({listed}), "
                        "so a client-supplied (replayed) assertion would reach the upstream",
                    )
                ]
            )
        for key in IDENTITY_HEADERS:
            if getattr(headers, key) == header:
                raise Problems([(("assertion", "header"), f"same header as headers.{key} ({header!r})")])
        return self

    @model_validator(mode="after")
    def _stale_needs_the_cache(self) -> Config:
        if self.redis.failure_policy == "stale" and not self.cache.enabled:
            raise Problems(
                [(("redis", "failure_policy"), "stale needs cache.enabled: true (its invalidation channel)")]
            )
        return self
