"""redis: where sessions are stored and how to reach them, and cache: the per-process session cache."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from sidecar.config.files import FilePath, FileProblem, Reader, read_file, read_text, secrets_from_files, shown_path
from sidecar.config.models.base import (
    Duration,
    Secret,
    Section,
    Url,
    has_space_or_control,
    misplaced_userinfo,
    url_for_message,
)

_REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster", "unix")
MAX_STALE_FOR = 300.0


def _password_reader(secret: str, source: str, data: dict[str, Any]) -> Reader:
    def read(path: str) -> dict[str, Any]:
        if data.get(secret):
            raise FileProblem(f"give either redis.{secret} or redis.{source}, not both")
        value = read_text(path)
        if not value:
            raise FileProblem(f"{shown_path(path)} is empty")
        return {secret: value}

    return read


def _readable(path: str) -> dict[str, Any]:
    read_file(path)  # redis-py opens it at connect time; a problem is found now, at load
    return {}


def redis_url(value: str) -> str:
    """``value`` when it is a Redis URL the connection module can use; raises ValueError naming the problem (never
    quoting a password)."""
    if has_space_or_control(value):
        raise ValueError("must not contain whitespace or control characters")
    if misplaced_userinfo(value) or "#" in value:
        # Every reader (urlsplit, redis-py, the redaction) would end the user info (or a password parameter) at
        # that character and take the rest of the password for a host, port, path or fragment: refuse the URL,
        # and never print it. A Redis URL has no use for a fragment.
        raise ValueError(
            "a user name or password holds an unencoded '/', '?' or '#' (or the URL has an '@' after its "
            "host, or a '#'): percent-encode them in the URL (/ %2F, ? %3F, # %23, @ %40) or use "
            "redis.password_file"
        )
    shown = url_for_message(value)
    scheme, sep, rest = value.partition("://")
    if scheme not in _REDIS_SCHEMES or not sep:
        schemes = ", ".join(f"{s}://" for s in _REDIS_SCHEMES)
        raise ValueError(f"unsupported URL {shown} (use {schemes})")
    if scheme in ("redis+sentinel", "redis+cluster"):
        # Several hosts: urlsplit cannot read them; the connection module checks each host:port.
        if not rest.split("/", 1)[0].rpartition("@")[2]:
            raise ValueError(f"{shown} has no host")
        return value
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ValueError(f"{shown} is not a valid URL ({exc})") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs a socket path, e.g. unix:///run/redis.sock")
    elif not parts.hostname:
        raise ValueError(f"{shown} has no host")
    elif parts.scheme in ("redis", "rediss"):
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            raise ValueError(f"{shown} has an invalid port") from None
    return value


class RedisConfig(Section):
    url: Url = "redis://127.0.0.1:6379/0"
    key_prefix: str = "sidecar:"
    timeout: Duration = 0.15
    # Revocations and rotations wait for this many replicas to acknowledge (only when replicas are connected),
    # so a failover cannot bring a revoked session back. 0 turns it off.
    wait_replicas: int = Field(default=1, ge=0, le=16)
    wait_timeout: Duration = 0.5
    # ACL credentials for the data nodes (they may also be in the URL); a *_file is read at load time.
    username: str = ""
    password: Secret = Field(default="", repr=False)
    password_file: FilePath = ""
    # Sentinel nodes authenticate separately from the master they point to.
    sentinel_username: str = ""
    sentinel_password: Secret = Field(default="", repr=False)
    sentinel_password_file: FilePath = ""
    # TLS for rediss:// (verification on unless tls_verify is false).
    tls_ca_file: FilePath = ""
    tls_cert_file: FilePath = ""
    tls_key_file: FilePath = ""
    tls_verify: bool = True
    max_connections: int = Field(default=64, ge=1, le=10_000)
    # deny: a store that cannot answer means 503. stale: a session confirmed within stale_for (while the
    # invalidation channel was live) is still answered from its last known identity; needs cache.enabled.
    failure_policy: str = "deny"
    stale_for: Duration = 30.0

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        readers = {
            "password_file": _password_reader("password", "password_file", data),
            "sentinel_password_file": _password_reader("sentinel_password", "sentinel_password_file", data),
            "tls_ca_file": _readable,
            "tls_cert_file": _readable,
            "tls_key_file": _readable,
        }
        out = secrets_from_files(data, readers)
        # Reported with the files' problems (not after the section validates), so every file problem shows at once.
        one_of_the_pair = bool(data.get("tls_cert_file")) != bool(data.get("tls_key_file"))
        if one_of_the_pair and not isinstance(out.get("tls_key_file"), FileProblem):
            out["tls_key_file"] = FileProblem("tls_cert_file and tls_key_file go together")
        return out

    @field_validator("failure_policy")
    @classmethod
    def _failure_policy(cls, value: str) -> str:
        if value not in ("deny", "stale"):
            raise ValueError(f"must be deny or stale (got {value!r})")
        return value

    @field_validator("stale_for")
    @classmethod
    def _stale_for(cls, value: float) -> float:
        if value > MAX_STALE_FOR:
            raise ValueError("must be at most 5m: a last known identity ages fast")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return redis_url(value)

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if has_space_or_control(value):
            raise ValueError("must not contain whitespace or control characters")
        return value


class CacheConfig(Section):
    """The per-process session cache; it serves hits only while its invalidation channel is connected."""

    enabled: bool = True
    ttl: Duration = 10.0
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)
