"""listen: the addresses served, and forward_auth: how listen.http reads a forward-auth request."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from sidecar.config.models.base import Duration, Problem, Problems, Section, one_of
from sidecar.core.durations import format_duration

_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")

MIN_IDLE_TIMEOUT = 1.0
MAX_IDLE_TIMEOUT = 3600.0
LISTENERS = ("grpc", "http", "admin", "api")


UNIX_PREFIX = "unix:"
# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_UNIX_PATH_BYTES = 107


def unix_path(address: str) -> str | None:
    """The socket path of a ``unix:/path`` address; None for ``host:port``."""
    return address[len(UNIX_PREFIX) :] if address.startswith(UNIX_PREFIX) else None


def _check_unix(value: str, path: str) -> str:
    if not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"invalid address {value!r}: a unix socket is unix:/absolute/path/to/file")
    if "\x00" in path or len(path.encode("utf-8", "surrogateescape")) > MAX_UNIX_PATH_BYTES:
        raise ValueError(
            f"invalid address {value!r}: a unix socket path is at most {MAX_UNIX_PATH_BYTES} bytes, no NUL"
        )
    return value


def _check_address(value: str) -> str:
    if (path := unix_path(value)) is not None:
        return _check_unix(value, path)
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or len(port) > 5:
        raise ValueError(f"invalid address {value!r} (use host:port, [ipv6]:port or unix:/path)")
    if int(port) > 65535:
        raise ValueError(f"invalid address {value!r}: port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"invalid address {value!r}: {host} is not an IPv6 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid address {value!r} (use host:port, [ipv6]:port or unix:/path)")
    return value


class ListenConfig(Section):
    grpc: str = "127.0.0.1:9191"
    http: str = "127.0.0.1:9192"
    admin: str = "127.0.0.1:9090"
    # The SessionService's own address; "": it shares listen.grpc with ext_authz.
    api: str = ""
    # listen.http and listen.admin: a keep-alive connection idle this long is closed, and at most max_connections
    # are open at once (more are refused at accept), so idle or slow clients cannot hold every file descriptor.
    idle_timeout: Duration = 60.0
    max_connections: int = Field(default=1000, ge=1, le=100_000)
    # listen.grpc's handler threads running at once (sidecar/grpcserver.py); 0: Check runs on the event loop
    # (grpc.aio), the model listen.grpc has anyway when the SessionService shares it.
    grpc_threads: int = Field(default=4, ge=0, le=64)

    @field_validator("grpc")
    @classmethod
    def _grpc(cls, value: str) -> str:
        if not value:
            raise ValueError("must be set (the gRPC listener cannot be disabled)")
        return _check_address(value)

    @field_validator("http", "admin", "api")
    @classmethod
    def _optional(cls, value: str) -> str:
        return value if value == "" else _check_address(value)

    @field_validator("idle_timeout")
    @classmethod
    def _idle_timeout(cls, value: float) -> float:
        if not MIN_IDLE_TIMEOUT <= value <= MAX_IDLE_TIMEOUT:
            low, high = format_duration(MIN_IDLE_TIMEOUT), format_duration(MAX_IDLE_TIMEOUT)
            raise ValueError(f"must be between {low} and {high} (got {format_duration(value)})")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> ListenConfig:
        seen: dict[str, str] = {}
        problems: list[Problem] = []
        for key in LISTENERS:
            address: str = getattr(self, key)
            if not address or address.endswith(":0"):  # disabled, or an ephemeral port
                continue
            if address in seen:
                problems.append(((key,), f"same address as listen.{seen[address]} ({address})"))
            seen.setdefault(address, key)
        if problems:
            raise Problems(problems)
        return self


# The same names as sidecar.authz.forwarded.PROXIES, the adapter that acts on them (a test pins the two together).
FORWARD_AUTH_PROXIES = ("any", "envoy", "nginx", "traefik", "ingress-nginx")
MAX_TRUSTED_HOPS = 10


class ForwardAuthConfig(Section):
    """How listen.http reads a forward-auth request: which proxy is in front and how far X-Forwarded-For is trusted."""

    # The X-Forwarded-For entries appended by trusted proxies; 0: the abuse counter uses the TCP peer address.
    trusted_hops: int = Field(default=0, ge=0, le=MAX_TRUSTED_HOPS)
    # Which original-request headers /forward-auth reads (any: every known set, which must then agree).
    proxy: str = "any"

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy(cls, value: Any) -> Any:
        return one_of(value, FORWARD_AUTH_PROXIES)
