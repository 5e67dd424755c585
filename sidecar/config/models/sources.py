"""sources: where sessions come from, tried in order (default: this sidecar's own, ``[{kind: native}]``).

Each entry names a kind (``sidecar.sources.kinds``); every key a kind does not use is an error naming it, and what
is left unset takes the framework's own default. Paths are held to ``sidecar.sources.paths``'s rule and cookie
names to RFC 6265's, as the rest of the config is.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from sidecar.config.files import FilePath, FileProblem, read_file, secrets_from_files, shown_path
from sidecar.config.models.base import (
    HTTP_TOKEN,
    Duration,
    Problem,
    Problems,
    Secret,
    Section,
    Url,
    has_space_or_control,
)
from sidecar.config.models.store import redis_url
from sidecar.core.durations import format_duration
from sidecar.core.redact import redact_url
from sidecar.sources import kinds
from sidecar.sources.framework import Settings
from sidecar.sources.paths import Paths, path_problem

MAX_SOURCES = 8
MAX_SECRETS = 16
MIN_SECRET_BYTES = 8  # express-session and Flask take any non-empty secret; fewer bytes than this is a mistake


class SourceRedisConfig(Section):
    """The application's own Redis, when it is not the sidecar's (``redis``)."""

    url: Url
    username: str = ""
    password: Secret = Field(default="", repr=False)
    password_file: FilePath = ""
    timeout: Duration = 0.15

    @model_validator(mode="before")
    @classmethod
    def _password_from_file(cls, data: Any) -> Any:
        return secrets_from_files(data, {"password_file": _password}) if isinstance(data, dict) else data

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return redis_url(value)


def _password(path: str) -> dict[str, Any]:
    text = read_file(path).decode("utf-8", "replace").strip()
    if not text:
        raise FileProblem(f"{shown_path(path)} is empty")
    return {"password": text}


def _secrets(path: str) -> dict[str, Any]:
    try:
        lines = read_file(path).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise FileProblem(f"{shown_path(path)} is not UTF-8 text") from None
    secrets = [line.strip() for line in lines if line.strip()]
    if not secrets:
        raise FileProblem(f"{shown_path(path)} holds no secret (one per line)")
    if len(secrets) > MAX_SECRETS:
        raise FileProblem(f"{shown_path(path)} holds more than {MAX_SECRETS} secrets")
    if any(len(secret.encode()) < MIN_SECRET_BYTES for secret in secrets):
        raise FileProblem(f"{shown_path(path)} holds a secret shorter than {MIN_SECRET_BYTES} bytes")
    return {"secrets": tuple(secrets)}


class SourceConfig(Section):
    kind: str
    cookie: str | None = None
    key_prefix: str | None = None
    serializer: str | None = None
    redis: SourceRedisConfig | None = None
    secrets_file: FilePath = ""
    # Read from secrets_file at load time; never printed.
    secrets: tuple[Secret, ...] = Field(default=(), repr=False, exclude=True)
    user_id: str | None = None
    email: str | None = None
    roles: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets_only_from_their_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "secrets" in data:
            raise Problems([(("secrets",), "unknown key (secrets are read from secrets_file, one per line)")])
        kind = data.get("kind")
        defaults = kinds.defaults(kind) if isinstance(kind, str) else None
        if defaults is None or defaults.signed == "never":
            return data  # not read: the entry's own check names a secrets_file its kind does not take
        return secrets_from_files(data, {"secrets_file": _secrets})

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value not in kinds.KINDS:
            raise ValueError(f"must be one of {', '.join(kinds.KINDS)} (got {value!r})")
        return value

    @field_validator("cookie")
    @classmethod
    def _cookie(cls, value: str | None) -> str | None:
        if value is not None and not HTTP_TOKEN.fullmatch(value):
            raise ValueError(f"invalid cookie name {value!r}: must be an RFC 6265 token")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _key_prefix(cls, value: str | None) -> str | None:
        if value is not None and (not value or has_space_or_control(value) or len(value) > 256):
            raise ValueError("must be 1 to 256 characters without whitespace or control characters")
        return value

    @field_validator("user_id", "email", "roles")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (problem := path_problem(value)) is not None:
            raise ValueError(f"the path {problem}")
        return value

    @model_validator(mode="after")
    def _keys_of_the_kind(self) -> SourceConfig:
        defaults = kinds.defaults(self.kind)
        problems: list[Problem] = []
        if defaults is None:  # native: the top-level cookie, redis and session keys configure it
            for key in ("cookie", "key_prefix", "serializer", "redis", "secrets_file", "user_id", "email", "roles"):
                if getattr(self, key) not in (None, ""):
                    problems.append(((key,), "not a key of kind native (it takes cookie.name and redis.*)"))
            raise_if(problems)
            return self
        if self.serializer is not None and self.serializer not in defaults.serializers:
            choices = " | ".join(defaults.serializers) if defaults.serializers else "none: it has one format"
            problems.append((("serializer",), f"must be {choices} for kind {self.kind} (got {self.serializer!r})"))
        if defaults.signed == "required" and not self.secrets_file:
            problems.append(
                (("secrets_file",), f"is required for kind {self.kind}: its cookies are signed with the app's secret")
            )
        if defaults.signed == "never" and self.secrets_file:
            problems.append((("secrets_file",), f"not a key of kind {self.kind}: its cookies are not signed"))
        raise_if(problems)
        return self

    def shown_as(self) -> object | None:
        """``config check`` shows what the entry does: its kind's defaults filled in, secrets only as their file."""
        if kinds.defaults(self.kind) is None:
            return {"kind": self.kind}
        settings = self.settings()
        shown: dict[str, object] = {
            "kind": self.kind,
            "cookie": settings.cookie,
            "key_prefix": settings.key_prefix,
        }
        if settings.serializer:
            shown["serializer"] = settings.serializer
        if self.redis is not None:
            shown["redis"] = {"url": redact_url(self.redis.url), "timeout": format_duration(self.redis.timeout)}
        if self.secrets_file:
            shown["secrets_file"] = self.secrets_file
        paths = settings.paths
        shown.update(
            {"user_id": paths.user_id or "(Spring Security's principal)", "email": paths.email, "roles": paths.roles}
        )
        return shown

    def settings(self) -> Settings:
        """This entry with its kind's defaults filled in (not for ``native``)."""
        defaults = kinds.defaults(self.kind)
        assert defaults is not None, "native has no framework settings"
        paths = Paths(
            self.user_id if self.user_id is not None else defaults.paths.user_id,
            self.email if self.email is not None else defaults.paths.email,
            self.roles if self.roles is not None else defaults.paths.roles,
        )
        return Settings(
            cookie=self.cookie or defaults.cookie,
            key_prefix=self.key_prefix if self.key_prefix is not None else defaults.key_prefix,
            serializer=self.serializer or (defaults.serializers[0] if defaults.serializers else ""),
            secrets=tuple(secret.encode() for secret in self.secrets),
            paths=paths,
        )


def raise_if(problems: list[Problem]) -> None:
    if problems:
        raise Problems(problems)


def checked_sources(value: tuple[SourceConfig, ...]) -> tuple[SourceConfig, ...]:
    """The whole list's rules: at least one entry, one native at most (at most MAX_SOURCES is checked before the
    entries are validated, by ``Config``)."""
    if not value:
        raise ValueError("must list at least one source (the default is [{kind: native}])")
    natives = [i for i, source in enumerate(value) if source.kind == kinds.NATIVE]
    if len(natives) > 1:
        raise Problems([((natives[1], "kind"), f"native is listed twice (first at sources[{natives[0]}])")])
    return value
