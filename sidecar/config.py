"""The configuration: one YAML file plus ``SIDECAR_<SECTION>__<KEY>`` environment overrides.

This is the only module that reads config files and the environment. :func:`load_config` returns a frozen,
fully validated :class:`Config` or raises one :class:`~sidecar.errors.ConfigError` listing every problem,
each naming its key path (``routes[1].prefix: must start with "/"``) and, for an environment override, the
variable.
:func:`redacted` renders the effective config for ``config check`` with secrets hidden.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import stat
from collections.abc import Iterator, Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sidecar.core.durations import format_duration, parse_duration
from sidecar.core.redact import REDACTED, redact_url
from sidecar.errors import ConfigError

__all__ = [
    "ApiConfig",
    "AssertionConfig",
    "AssertionKey",
    "CacheConfig",
    "Config",
    "CookieConfig",
    "DenyConfig",
    "ForwardAuthConfig",
    "HeadersConfig",
    "ListenConfig",
    "LogConfig",
    "RedisConfig",
    "RouteConfig",
    "SessionConfig",
    "SigningKey",
    "TokenConfig",
    "load_config",
    "redacted",
]

ENV_PREFIX = "SIDECAR_"
CONFIG_ENV = "SIDECAR_CONFIG"

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 tchar (also RFC 6265 cookie-name)
_LOWER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_KID = re.compile(r"[A-Za-z0-9_-]{1,16}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")
_REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "redis+cluster", "unix")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("json", "text")
_MIN_SECRET_BYTES = 32


Loc = tuple[str | int, ...]  # a key path: ("routes", 1, "prefix")
Problem = tuple[Loc, str]  # a key path below the validated model, and what is wrong there


class _Problems(ValueError):
    """Raised by a validator to report problems under sub-keys of the model it validates."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_FILE_BYTES = 64 * 1024  # a password, an API token, a PEM key, a CA bundle
MAX_ROUTES = 10_000


class _Unreadable(ValueError):
    """A file the config names cannot be used; the message says why, without the path or any of the content."""


def _read_bounded(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Anything else is refused before it is read: a device (``/dev/zero`` would be read until memory runs out), a
    FIFO (opened without blocking, so a FIFO with no writer cannot hang the load), a socket, a directory, or a file
    larger than ``limit`` (also one that grows past it while being read).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _Unreadable(exc.strerror or exc.__class__.__name__) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _Unreadable("it is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise _Unreadable("it is not a regular file (a device, FIFO or socket)")
        too_large = _Unreadable(f"it is larger than {_size(limit)}")
        if info.st_size > limit:
            raise too_large
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            raise too_large
        return b"".join(chunks)
    except OSError as exc:
        raise _Unreadable(exc.strerror or exc.__class__.__name__) from None
    finally:
        os.close(fd)


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit // 1024} KiB"


_PATH_LIKE = re.compile(r"(?:/|\./|\.\./|~/)[^\s]{0,1020}")


def _shown_path(path: str) -> str:
    """A file key's value as a message may show it: quoted when it reads as a path, else not at all (a secret
    pasted where its file's path belongs must not be echoed back)."""
    if _PATH_LIKE.fullmatch(path) and not _has_control(path) and "-----" not in path:
        return repr(path)
    return "the file it names"


def _read_secret_file(path: str) -> str:
    """A secret file's text (UTF-8, surrounding whitespace stripped); raises ``_Unreadable`` naming the file only
    when its name reads as a path."""
    try:
        return _read_bounded(path, MAX_SECRET_FILE_BYTES).decode("utf-8").strip()
    except _Unreadable as exc:
        raise _Unreadable(f"cannot read {_shown_path(path)}: {exc}") from None
    except UnicodeDecodeError:
        raise _Unreadable(f"cannot read {_shown_path(path)}: it is not UTF-8 text") from None


def _has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _duration(value: Any) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- listen -------------------------------------------------------------------------------------------------


def _check_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or len(port) > 5:
        raise ValueError(f"invalid address {value!r} (use host:port or [ipv6]:port)")
    if int(port) > 65535:
        raise ValueError(f"invalid address {value!r}: port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"invalid address {value!r}: {host} is not an IPv6 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid address {value!r} (use host:port or [ipv6]:port)")
    return value


MIN_IDLE_TIMEOUT = 1.0
MAX_IDLE_TIMEOUT = 3600.0
LISTENERS = ("grpc", "http", "admin", "api")


class ListenConfig(_Section):
    grpc: str = "127.0.0.1:9191"
    http: str = "127.0.0.1:9192"
    admin: str = "127.0.0.1:9090"
    # The SessionService's own address; "": it shares listen.grpc with ext_authz.
    api: str = ""
    # listen.http and listen.admin: a keep-alive connection idle this long is closed, and at most max_connections
    # are open at once (more are refused at accept), so idle or slow clients cannot hold every file descriptor.
    idle_timeout: Duration = 60.0
    max_connections: int = Field(default=1000, ge=1, le=100_000)

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
            raise _Problems(problems)
        return self


# --- redis --------------------------------------------------------------------------------------------------


def _misplaced_userinfo(url: str) -> bool:
    """True when an ``@`` follows the end of the URL's authority (the first ``/``, ``?`` or ``#`` after ``://``):
    a password holding one of those characters unencoded, which no URL reader splits where the writer meant.

    Without ``://`` any ``@`` counts: such a value is no URL, and whatever precedes the ``@`` may be a password.
    """
    _, sep, rest = url.partition("://")
    if not sep:
        return "@" in url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return "@" in rest[end:]


def _url_for_message(url: str) -> str:
    """``url`` as an error message may show it: quoted with its password redacted, or not at all when the
    redaction could not find the user info for certain."""
    if _misplaced_userinfo(url):
        return "(not shown: it may hold a password)"
    return repr(redact_url(url))


class RedisConfig(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "sidecar:"
    timeout: Duration = 0.15
    # Revocations and rotations wait for this many replicas to acknowledge (only when replicas are connected),
    # so a failover cannot bring a revoked session back. 0 turns it off.
    wait_replicas: int = Field(default=1, ge=0, le=16)
    wait_timeout: Duration = 0.5
    # ACL credentials for the data nodes (they may also be in the URL); a *_file is read at load time.
    username: str = ""
    password: str = Field(default="", repr=False)
    password_file: str = ""
    # Sentinel nodes authenticate separately from the master they point to.
    sentinel_username: str = ""
    sentinel_password: str = Field(default="", repr=False)
    sentinel_password_file: str = ""
    # TLS for rediss:// (verification on unless tls_verify is false).
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_verify: bool = True
    max_connections: int = Field(default=64, ge=1, le=10_000)
    # deny: a store that cannot answer means 503. stale: a session confirmed within stale_for (while the
    # invalidation channel was live) is still answered from its last known identity; needs cache.enabled.
    failure_policy: str = "deny"
    stale_for: Duration = 30.0

    @model_validator(mode="after")
    def _read_secret_files(self) -> RedisConfig:
        problems: list[Problem] = []
        if self.failure_policy not in ("deny", "stale"):
            problems.append((("failure_policy",), f"must be deny or stale (got {self.failure_policy!r})"))
        if self.stale_for > 300:
            problems.append((("stale_for",), "must be at most 5m: a last known identity ages fast"))
        for secret, source in (("password", "password_file"), ("sentinel_password", "sentinel_password_file")):
            path = getattr(self, source)
            if not path:
                continue
            if getattr(self, secret):
                problems.append(((source,), f"give either redis.{secret} or redis.{source}, not both"))
                continue
            try:
                value = _read_secret_file(path)
            except _Unreadable as exc:
                problems.append(((source,), str(exc)))
                continue
            if not value:
                problems.append(((source,), f"{_shown_path(path)} is empty"))
            object.__setattr__(self, secret, value)
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(self, name)
            if path:
                try:
                    _read_bounded(path, MAX_SECRET_FILE_BYTES)
                except _Unreadable as exc:
                    problems.append(((name,), f"cannot read {_shown_path(path)}: {exc}"))
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            problems.append((("tls_key_file",), "tls_cert_file and tls_key_file go together"))
        if problems:
            raise _Problems(problems)
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if _has_control(value) or any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace or control characters")
        if _misplaced_userinfo(value) or "#" in value:
            # Every reader (urlsplit, redis-py, the redaction) would end the user info (or a password parameter) at
            # that character and take the rest of the password for a host, port, path or fragment: refuse the URL,
            # and never print it. A Redis URL has no use for a fragment.
            raise ValueError(
                "a user name or password holds an unencoded '/', '?' or '#' (or the URL has an '@' after its "
                "host, or a '#'): percent-encode them in the URL (/ %2F, ? %3F, # %23, @ %40) or use "
                "redis.password_file"
            )
        shown = _url_for_message(value)
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

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if _has_control(value) or any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace or control characters")
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "url" else value


# --- cookie, session ----------------------------------------------------------------------------------------


class CookieConfig(_Section):
    name: str = "SESSION"
    strip_upstream: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOKEN.fullmatch(value):
            raise ValueError(
                f"invalid cookie name {value!r}: must be an RFC 6265 token "
                "(letters, digits and !#$%&'*+-.^_`|~; no spaces, separators or control characters)"
            )
        return value


class SessionConfig(_Section):
    idle_timeout: Duration = 1800.0
    absolute_timeout: Duration = 43200.0
    max_per_user: int = Field(default=0, ge=0, le=10_000)  # 0: no cap; else creating one more evicts the oldest
    encryption_keys: tuple[Annotated[SigningKey, BeforeValidator(lambda v: _signing_key(v, exact=32))], ...] = ()
    # With encryption_keys, unsealed values are refused (a Redis writer could forge them); true only while
    # sessions written before the keys were set are still live.
    accept_unsealed: bool = False

    @field_validator("encryption_keys")
    @classmethod
    def _unique_encryption_keys(cls, value: tuple[SigningKey, ...]) -> tuple[SigningKey, ...]:
        return _unique_kids(value)

    @model_validator(mode="after")
    def _ordered(self) -> SessionConfig:
        if self.idle_timeout > self.absolute_timeout:
            idle, absolute = format_duration(self.idle_timeout), format_duration(self.absolute_timeout)
            raise _Problems([(("idle_timeout",), f"{idle} exceeds session.absolute_timeout ({absolute}); it must not")])
        return self


# --- headers ------------------------------------------------------------------------------------------------


def _header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid header name {value!r}: must be an HTTP token")
    if not _LOWER_TOKEN.fullmatch(value):
        raise ValueError(f"invalid header name {value!r}: must be lowercase")
    return value


_IDENTITY_HEADERS = ("user_id", "email", "roles", "session")


class HeadersConfig(_Section):
    user_id: str = "x-user-id"
    email: str = "x-user-email"
    roles: str = "x-user-roles"
    session: str = "x-session-id"
    strip_prefixes: tuple[str, ...] = ("x-user-", "x-session-")
    # The most bytes (names + values) of the headers one allow may set upstream: an identity that would need more
    # is denied (403 identity_too_large) rather than sent on to fail with a 431 at the upstream.
    max_bytes: int = Field(default=8192, ge=512, le=65536)

    @field_validator(*_IDENTITY_HEADERS)
    @classmethod
    def _names(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("strip_prefixes")
    @classmethod
    def _prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must list at least one prefix (identity headers must be stripped from requests)")
        problems: list[Problem] = [
            ((i,), str(exc)) for i, prefix in enumerate(value) if (exc := _prefix_problem(prefix))
        ]
        if problems:
            raise _Problems(problems)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HeadersConfig:
        problems: list[Problem] = []
        owner: dict[str, str] = {}
        for key in _IDENTITY_HEADERS:
            name: str = getattr(self, key)
            if not name.startswith(self.strip_prefixes):
                listed = ", ".join(self.strip_prefixes)
                problems.append(
                    (
                        (key,),
                        f"{name!r} does not start with any of headers.strip_prefixes ({listed}), "
                        "so a client-supplied copy would reach the upstream",
                    )
                )
            if name in owner:
                problems.append(((key,), f"same header as headers.{owner[name]} ({name!r})"))
            owner.setdefault(name, key)
        if problems:
            raise _Problems(problems)
        return self


def _prefix_problem(prefix: str) -> ValueError | None:
    try:
        _header_name(prefix)
    except ValueError as exc:
        return ValueError(str(exc).replace("header name", "header prefix"))
    return None


# --- deny, routes -------------------------------------------------------------------------------------------


class DenyConfig(_Section):
    login_url: str = ""

    @field_validator("login_url")
    @classmethod
    def _login_url(cls, value: str) -> str:
        if value == "":
            return value
        bad = _has_control(value) or any(ch.isspace() for ch in value) or _misplaced_userinfo(value)
        try:
            parts = urlsplit(value)
        except ValueError:
            bad = True
        else:
            bad = bad or parts.scheme not in ("http", "https") or not parts.netloc or not parts.hostname
        if bad:
            shown = _url_for_message(value)
            raise ValueError(f'must be "" or an absolute http(s) URL, e.g. https://login.example.com/ (got {shown})')
        return value


def _role_problem(role: str) -> str | None:
    if not role:
        return "must not be empty"
    if "," in role or _has_control(role) or any(ch.isspace() for ch in role):
        return f"invalid role {role!r}: no commas, whitespace or control characters"
    return None


class RouteConfig(_Section):
    prefix: str
    public: bool = False
    roles: tuple[str, ...] = ()

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError('must start with "/"')
        if _has_control(value) or any(ch.isspace() for ch in value) or "?" in value or "#" in value:
            raise ValueError(f"invalid path prefix {value!r}: no whitespace, control characters, '?' or '#'")
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[Problem] = [((i,), msg) for i, role in enumerate(value) if (msg := _role_problem(role))]
        if problems:
            raise _Problems(problems)
        return value

    @model_validator(mode="after")
    def _public_without_roles(self) -> RouteConfig:
        if self.public and self.roles:
            raise _Problems([(("roles",), "a public route cannot require roles (drop public or roles)")])
        return self


# --- token, log ---------------------------------------------------------------------------------------------


class SigningKey(_Section):
    kid: str
    secret: bytes = Field(repr=False)


def _signing_key(value: Any, exact: int | None = None) -> Any:
    if isinstance(value, SigningKey):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a 'KID:SECRET' string")
    kid, sep, secret = value.partition(":")
    if not sep:
        raise ValueError("must be 'KID:SECRET' (no ':' found)")
    # Neither part is ever echoed: an entry written back to front (SECRET:KID) has its secret where the id goes,
    # and the key path (token.keys[1]) names the entry well enough.
    if not _KID.fullmatch(kid):
        raise ValueError("invalid key id: 1-16 characters of A-Z a-z 0-9 _ - before the ':' (KID:SECRET)")
    if not _BASE64URL.fullmatch(secret) or len(secret.rstrip("=")) % 4 == 1:
        raise ValueError("the secret (after the ':') is not base64url")
    try:
        raw = base64.urlsafe_b64decode(secret.rstrip("=") + "=" * (-len(secret.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("the secret (after the ':') is not base64url") from None
    if exact is not None and len(raw) != exact:
        raise ValueError(f"the secret is {len(raw)} bytes; exactly {exact} are required (AES-256)")
    if len(raw) < _MIN_SECRET_BYTES:
        raise ValueError(
            f"the secret is {len(raw)} bytes; at least {_MIN_SECRET_BYTES} are required "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return SigningKey(kid=kid, secret=raw)


# SessionConfig names SigningKey before it exists: resolve that annotation now, so environment overrides of
# session.encryption_keys are read as a list like token.keys.
SessionConfig.model_rebuild(force=True)


class TokenConfig(_Section):
    keys: tuple[Annotated[SigningKey, BeforeValidator(_signing_key)], ...] = ()

    @field_validator("keys")
    @classmethod
    def _unique(cls, value: tuple[SigningKey, ...]) -> tuple[SigningKey, ...]:
        return _unique_kids(value)


def _unique_kids(value: tuple[SigningKey, ...]) -> tuple[SigningKey, ...]:
    first: dict[str, int] = {}
    problems: list[Problem] = []
    for i, key in enumerate(value):
        if key.kid in first:
            problems.append(((i,), f"duplicate key id (the same as entry {first[key.kid]})"))
        first.setdefault(key.kid, i)
    if problems:
        raise _Problems(problems)
    return value


_MIN_API_TOKEN_CHARS = 24


class ApiConfig(_Section):
    """The SessionService API on the gRPC listener: off unless enabled, and then only for bearer-token callers."""

    enabled: bool = False
    token_file: str = ""
    # Read from token_file at load time; never printed.
    token: str = Field(default="", repr=False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _token_only_from_its_file(cls, data: Any) -> Any:
        # A token written in the config would sit in a ConfigMap and in `config check` error paths: files only.
        if isinstance(data, dict) and "token" in data:
            raise _Problems([(("token",), "unknown key (the token is read from api.token_file)")])
        return data

    @model_validator(mode="after")
    def _read_token(self) -> ApiConfig:
        if not self.enabled:
            return self
        if not self.token_file:
            raise _Problems(
                [(("token_file",), "is required when api.enabled is true (a file holding the bearer token)")]
            )
        try:
            token = _read_secret_file(self.token_file)
        except _Unreadable as exc:
            raise _Problems([(("token_file",), str(exc))]) from None
        if len(token) < _MIN_API_TOKEN_CHARS or any(ch.isspace() or not ch.isprintable() for ch in token):
            raise _Problems(
                [(("token_file",), f"must hold one token of at least {_MIN_API_TOKEN_CHARS} printable characters")]
            )
        object.__setattr__(self, "token", token)
        return self


# --- assertion ----------------------------------------------------------------------------------------------

ASSERTION_CLAIMS = ("sub", "email", "roles", "sid")
MAX_ASSERTION_TTL = 300.0  # an assertion is a bearer credential: keep the replay window short
_ASSERTION_KID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class AssertionKey(_Section):
    """A signing key of the identity assertion: a PEM private key (EC P-256 → ES256, Ed25519 → EdDSA)."""

    kid: str
    private_key_file: str
    # Read from private_key_file at load time; never printed.
    private_key_pem: bytes = Field(default=b"", repr=False, exclude=True)
    algorithm: str = Field(default="", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _only_settable_keys(cls, data: Any) -> Any:
        # private_key_pem and algorithm are read from the file, never written in the config.
        if isinstance(data, dict):
            derived = [key for key in ("private_key_pem", "algorithm") if key in data]
            if derived:
                raise _Problems([((key,), "unknown key (read from private_key_file)") for key in derived])
        return data

    @field_validator("kid")
    @classmethod
    def _kid(cls, value: str) -> str:
        if not _ASSERTION_KID.fullmatch(value):
            raise ValueError("invalid key id: 1-64 characters of A-Z a-z 0-9 _ . -")
        return value

    @model_validator(mode="after")
    def _read_key(self) -> AssertionKey:
        where = (("private_key_file",),)
        shown = _shown_path(self.private_key_file)
        try:
            pem = _read_bounded(self.private_key_file, MAX_SECRET_FILE_BYTES)
        except _Unreadable as exc:
            raise _Problems([(where[0], f"cannot read {shown}: {exc}")]) from None
        try:
            key = load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            reason = "it is encrypted (use an unencrypted PKCS#8 key)" if "encrypted" in str(exc) else "not a PEM key"
            if isinstance(exc, UnsupportedAlgorithm):
                reason = "its algorithm or curve is not supported (use EC P-256 or Ed25519)"
            raise _Problems([(where[0], f"{shown} is not a usable private key: {reason}")]) from None
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            algorithm = "ES256"
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            algorithm = "EdDSA"
        else:
            raise _Problems([(where[0], f"{shown} must hold an EC P-256 (ES256) or Ed25519 (EdDSA) private key")])
        object.__setattr__(self, "private_key_pem", pem)
        object.__setattr__(self, "algorithm", algorithm)
        return self


def _assertion_key(value: Any) -> Any:
    # "KID:PATH" is the short form (and the one an environment variable can hold), like token.keys.
    if isinstance(value, str):
        kid, sep, path = value.partition(":")
        if not sep or not path:
            raise ValueError("must be {kid: ..., private_key_file: ...} or 'KID:PATH'")
        return {"kid": kid, "private_key_file": path}
    return value


class AssertionConfig(_Section):
    """The optional signed identity assertion (a JWT) added to every allow that carries an identity."""

    enabled: bool = False
    header: str = "x-user-assertion"
    # The first key signs; every key is published at /.well-known/jwks.json (rotate: add second, then move first).
    keys: tuple[Annotated[AssertionKey, BeforeValidator(_assertion_key)], ...] = ()
    issuer: str = "session-sidecar"
    ttl: Duration = 60.0
    claims: tuple[str, ...] = ASSERTION_CLAIMS
    audience: str = ""  # "": the request's host; per route: Envoy context_extensions assertion_audience

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: float) -> float:
        if not 1.0 <= value <= MAX_ASSERTION_TTL:
            raise ValueError(
                f"must be between 1s and {format_duration(MAX_ASSERTION_TTL)} (got {format_duration(value)})"
            )
        return value

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[Problem] = [
            ((i,), f"unknown claim {claim!r} (choose from {', '.join(ASSERTION_CLAIMS)})")
            for i, claim in enumerate(value)
            if claim not in ASSERTION_CLAIMS
        ]
        if problems:
            raise _Problems(problems)
        if "sub" not in value:
            raise ValueError("must include sub (an assertion without a subject identifies no one)")
        return tuple(dict.fromkeys(value))

    @field_validator("issuer", "audience")
    @classmethod
    def _text(cls, value: str) -> str:
        if _has_control(value) or len(value) > 256:
            raise ValueError("must be at most 256 characters without control characters")
        return value

    @field_validator("keys")
    @classmethod
    def _unique_keys(cls, value: tuple[AssertionKey, ...]) -> tuple[AssertionKey, ...]:
        seen: set[str] = set()
        problems: list[Problem] = []
        for i, key in enumerate(value):
            if key.kid in seen:
                problems.append(((i, "kid"), f"duplicate key id {key.kid!r}"))
            seen.add(key.kid)
        if problems:
            raise _Problems(problems)
        return value

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> AssertionConfig:
        if self.enabled and not self.keys:
            raise _Problems(
                [
                    (
                        ("keys",),
                        "at least one key is required when assertion.enabled is true "
                        "(session-sidecar assertion keygen writes one)",
                    )
                ]
            )
        if not self.issuer:
            raise _Problems([(("issuer",), "must not be empty")])
        return self


class CacheConfig(_Section):
    """The per-process session cache; it serves hits only while its invalidation channel is connected."""

    enabled: bool = True
    ttl: Duration = 10.0
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096)


class LogConfig(_Section):
    level: str = "info"
    format: str = "json"  # json: one object per line (decision logs are structured); text: for a terminal
    # Every denial is logged; this fraction of allows too (0: none, 1: all).
    sample_allows: float = Field(default=0.01, ge=0.0, le=1.0)

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        return _one_of(value, _LOG_FORMATS)

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return _one_of(value, _LOG_LEVELS)


# The same names as sidecar.authz.forwarded.PROXIES, the adapter that acts on them (a test pins the two together).
FORWARD_AUTH_PROXIES = ("any", "envoy", "nginx", "traefik", "ingress-nginx")
MAX_TRUSTED_HOPS = 10


class ForwardAuthConfig(_Section):
    """How listen.http reads a forward-auth request: which proxy is in front and how far X-Forwarded-For is trusted."""

    # The X-Forwarded-For entries appended by trusted proxies; 0: the abuse counter uses the TCP peer address.
    trusted_hops: int = Field(default=0, ge=0, le=MAX_TRUSTED_HOPS)
    # Which original-request headers /forward-auth reads (any: every known set, which must then agree).
    proxy: str = "any"

    @field_validator("proxy", mode="before")
    @classmethod
    def _proxy(cls, value: Any) -> Any:
        return _one_of(value, FORWARD_AUTH_PROXIES)


def _one_of(value: Any, choices: tuple[str, ...]) -> str:
    """``value`` lower-cased when it names one of ``choices`` (case-insensitively)."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")


# --- the whole ----------------------------------------------------------------------------------------------


class Config(_Section):
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

    @field_validator("routes", mode="before")
    @classmethod
    def _bounded_routes(cls, value: Any) -> Any:
        # Checked before any route is validated: 200,000 routes took a minute and a gigabyte to refuse.
        if isinstance(value, list | tuple) and len(value) > MAX_ROUTES:
            raise ValueError(f"at most {MAX_ROUTES:,} routes (got {len(value):,}); use prefixes that cover more paths")
        return value

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
            raise _Problems(problems)
        return value

    @model_validator(mode="after")
    def _assertion_header_is_stripped(self) -> Config:
        header, headers = self.assertion.header, self.headers
        if not self.assertion.enabled:
            return self
        if not header.startswith(headers.strip_prefixes):
            listed = ", ".join(headers.strip_prefixes)
            raise _Problems(
                [
                    (
                        ("assertion", "header"),
                        f"{header!r} does not start with any of headers.strip_prefixes ({listed}), "
                        "so a client-supplied (replayed) assertion would reach the upstream",
                    )
                ]
            )
        for key in _IDENTITY_HEADERS:
            if getattr(headers, key) == header:
                raise _Problems([(("assertion", "header"), f"same header as headers.{key} ({header!r})")])
        return self

    @model_validator(mode="after")
    def _stale_needs_the_cache(self) -> Config:
        if self.redis.failure_policy == "stale" and not self.cache.enabled:
            raise _Problems(
                [(("redis", "failure_policy"), "stale needs cache.enabled: true (its invalidation channel)")]
            )
        return self


# --- loading ------------------------------------------------------------------------------------------------


# libyaml's parser when PyYAML has it: the pure-Python one took 44 s for a 1 MiB file of routes, libyaml 5 s.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """SafeLoader that rejects a key repeated in one mapping (PyYAML would silently keep the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_file(path: str) -> dict[str, Any]:
    try:
        text = _read_bounded(path, MAX_CONFIG_BYTES).decode("utf-8")
    except _Unreadable as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: the config file is not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}: invalid YAML{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections, not a {type(data).__name__}"])
    # A section written with nothing under it (`routes:`) means "the defaults".
    return {key: value for key, value in data.items() if value is not None}


def _parse_yaml_value(raw: str) -> Any:
    try:
        return yaml.load(raw, Loader=_SafeLoader)  # noqa: S506 - SafeLoader or its libyaml twin
    except yaml.YAMLError:
        return raw


def _section_models() -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {}
    for name, field in Config.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            models[name] = field.annotation
    return models


def _env_value(section: str, key: str, raw: str) -> Any:
    """An override's value: a list is a YAML flow sequence or comma-separated; anything else the raw string.

    Strings are taken verbatim (YAML would turn ``""`` into null and ``1:20`` into 80); pydantic parses
    booleans (``true``/``false``/``1``/``0``/``yes``/``no``) and durations come through ``parse_duration``.
    """
    annotation = Config.model_fields[section].annotation
    assert isinstance(annotation, type)
    field = annotation.model_fields[key]
    if getattr(field.annotation, "__origin__", None) is tuple:
        text = raw.strip()
        if text.startswith("["):
            return _parse_yaml_value(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str], problems: list[str], sources: dict[Loc, str]) -> None:
    sections = _section_models()
    overrides: list[tuple[int, str, list[str], str]] = []
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_ENV:
            continue
        parts = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        overrides.append((len(parts), name, parts, raw))
    # Whole sections (SIDECAR_ROUTES) first, then single keys (SIDECAR_REDIS__URL) on top of them.
    for _, name, parts, raw in sorted(overrides):
        section = parts[0]
        where = f"environment variable {name}"
        if section not in Config.model_fields:
            if len(parts) > 1:  # SIDECAR_FOO (no "__") may belong to something else; SIDECAR_FOO__BAR is ours
                problems.append(f"{where}: unknown section {section!r} (sections: {', '.join(Config.model_fields)})")
            continue
        if len(parts) == 1:
            value = _parse_yaml_value(raw)
            if section in sections and isinstance(value, dict) and isinstance(data.get(section), dict):
                value = {**data[section], **value}
            data[section] = value
            sources[(section,)] = name
            continue
        model = sections.get(section)
        if model is None:
            problems.append(f"{where}: {section} is a list; set it whole with {ENV_PREFIX}{section.upper()}")
            continue
        key = parts[1]
        if len(parts) > 2 or key not in model.model_fields:
            problems.append(
                f"{where}: unknown key {'__'.join(parts[1:])!r} in section {section} "
                f"(keys: {', '.join(model.model_fields)})"
            )
            continue
        target = data.setdefault(section, {})
        if isinstance(target, dict):  # else the file's section is malformed, and validation will say so
            target[key] = _env_value(section, key, raw)
            sources[(section, key)] = name


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "is required",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
}


_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "less_than_equal": ("le", "at most"),
    "greater_than": ("gt", "greater than"),
    "less_than": ("lt", "less than"),
}


def _bound_message(error: Mapping[str, Any]) -> str | None:
    bound = _BOUNDS.get(error["type"])
    if bound is None:
        return None
    key, words = bound
    return f"must be {words} {error.get('ctx', {}).get(key)}"


def _path(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(error: Mapping[str, Any], sources: Mapping[Loc, str]) -> Iterator[str]:
    loc: Loc = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _Problems):
        entries = [(loc + sub, message) for sub, message in cause.problems]
    elif isinstance(cause, ValueError):
        entries = [(loc, str(cause))]
    else:
        entries = [(loc, _MESSAGES.get(error["type"]) or _bound_message(error) or error["msg"])]
    for where, message in entries:
        source = next((sources[where[:n]] for n in range(len(where), 0, -1) if where[:n] in sources), None)
        suffix = f" (from {source})" if source else ""
        yield f"{_path(where) or '(top level)'}: {message}{suffix}"


def load_config(path: str | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the config file (``path``, else ``$SIDECAR_CONFIG``, else none) plus environment overrides.

    Raises ``ConfigError`` listing every problem found, each naming its key path.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_ENV) or None
    data = _read_file(path) if path is not None else {}
    problems: list[str] = []
    sources: dict[Loc, str] = {}
    _apply_env(data, env, problems, sources)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.extend(_describe(error, sources))
    if problems:
        raise ConfigError(problems)
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def redacted(config: Config) -> dict[str, object]:
    """The effective config as plain YAML-able data: durations as ``30m``, passwords and secrets hidden."""
    data: dict[str, Any] = _plain(config.model_dump())
    data["redis"]["url"] = redact_url(config.redis.url)
    data["redis"]["timeout"] = format_duration(config.redis.timeout)
    data["session"]["idle_timeout"] = format_duration(config.session.idle_timeout)
    data["session"]["absolute_timeout"] = format_duration(config.session.absolute_timeout)
    data["deny"]["login_url"] = redact_url(config.deny.login_url)
    data["redis"]["wait_timeout"] = format_duration(config.redis.wait_timeout)
    data["cache"]["ttl"] = format_duration(config.cache.ttl)
    data["redis"]["stale_for"] = format_duration(config.redis.stale_for)
    for secret in ("password", "sentinel_password"):
        data["redis"][secret] = REDACTED if getattr(config.redis, secret) else ""
    data["token"]["keys"] = [f"{key.kid}:{REDACTED}" for key in config.token.keys]
    data["session"]["encryption_keys"] = [f"{key.kid}:{REDACTED}" for key in config.session.encryption_keys]
    data["assertion"]["ttl"] = format_duration(config.assertion.ttl)
    data["listen"]["idle_timeout"] = format_duration(config.listen.idle_timeout)
    return data
