"""cookie, session and token: the session cookie, session lifetimes and sealing keys, and the token MAC keys.

Key ids and secret lengths are the rules of ``sidecar.core.tokens`` (and ``sidecar.core.sealing`` for the
AES-256 length), checked here so a key the core would refuse never gets past ``config check``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sidecar.config.models.base import HTTP_TOKEN, Duration, Problem, Problems, Section
from sidecar.core import tokens
from sidecar.core.durations import format_duration
from sidecar.core.redact import REDACTED
from sidecar.core.sealing import KEY_BYTES
from sidecar.core.session import timeout_problem


class CookieConfig(Section):
    name: str = "SESSION"
    strip_upstream: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not HTTP_TOKEN.fullmatch(value):
            raise ValueError(
                f"invalid cookie name {value!r}: must be an RFC 6265 token "
                "(letters, digits and !#$%&'*+-.^_`|~; no spaces, separators or control characters)"
            )
        return value


class SigningKey(Section):
    kid: str
    secret: bytes = Field(repr=False)

    def shown_as(self) -> object | None:
        return f"{self.kid}:{REDACTED}"


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
    if not tokens.is_kid(kid):
        raise ValueError(f"invalid key id: {tokens.KID_RULE} before the ':' (KID:SECRET)")
    try:
        raw = tokens.decode_secret(secret)
    except ValueError:
        raise ValueError("the secret (after the ':') is not base64url") from None
    if exact is not None and len(raw) != exact:
        raise ValueError(f"the secret is {len(raw)} bytes; exactly {exact} are required (AES-256)")
    if (problem := tokens.secret_problem(raw)) is not None:
        raise ValueError(f"the secret {problem} (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return SigningKey(kid=kid, secret=raw)


def _encryption_key(value: Any) -> Any:
    return _signing_key(value, exact=KEY_BYTES)


def _unique_kids(value: tuple[SigningKey, ...]) -> tuple[SigningKey, ...]:
    first: dict[str, int] = {}
    problems: list[Problem] = []
    for i, key in enumerate(value):
        if key.kid in first:
            problems.append(((i,), f"duplicate key id (the same as entry {first[key.kid]})"))
        first.setdefault(key.kid, i)
    if problems:
        raise Problems(problems)
    return value


class SessionConfig(Section):
    idle_timeout: Duration = 1800.0
    absolute_timeout: Duration = 43200.0
    max_per_user: int = Field(default=0, ge=0, le=10_000)  # 0: no cap; else creating one more evicts the oldest
    encryption_keys: tuple[Annotated[SigningKey, BeforeValidator(_encryption_key)], ...] = ()
    # With encryption_keys, unsealed values are refused (a Redis writer could forge them); true only while
    # sessions written before the keys were set are still live.
    accept_unsealed: bool = False

    @field_validator("idle_timeout", "absolute_timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if (problem := timeout_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _unique_encryption_keys(cls, value: tuple[SigningKey, ...]) -> tuple[SigningKey, ...]:
        return _unique_kids(value)

    @model_validator(mode="after")
    def _ordered(self) -> SessionConfig:
        if self.idle_timeout > self.absolute_timeout:
            idle, absolute = format_duration(self.idle_timeout), format_duration(self.absolute_timeout)
            raise Problems([(("idle_timeout",), f"{idle} exceeds session.absolute_timeout ({absolute}); it must not")])
        return self


class TokenConfig(Section):
    keys: tuple[Annotated[SigningKey, BeforeValidator(_signing_key)], ...] = ()

    @field_validator("keys")
    @classmethod
    def _unique(cls, value: tuple[SigningKey, ...]) -> tuple[SigningKey, ...]:
        return _unique_kids(value)
