"""headers: the identity headers an allow sets upstream, and the prefixes every request is stripped of."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from sidecar.config.models.base import HTTP_TOKEN, Problem, Problems, Section

_LOWER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")

IDENTITY_HEADERS = ("user_id", "email", "roles", "session")


def header_name(value: str) -> str:
    if not HTTP_TOKEN.fullmatch(value):
        raise ValueError(f"invalid header name {value!r}: must be an HTTP token")
    if not _LOWER_TOKEN.fullmatch(value):
        raise ValueError(f"invalid header name {value!r}: must be lowercase")
    return value


def _prefix_problem(prefix: str) -> ValueError | None:
    try:
        header_name(prefix)
    except ValueError as exc:
        return ValueError(str(exc).replace("header name", "header prefix"))
    return None


class HeadersConfig(Section):
    user_id: str = "x-user-id"
    email: str = "x-user-email"
    roles: str = "x-user-roles"
    session: str = "x-session-id"
    strip_prefixes: tuple[str, ...] = ("x-user-", "x-session-")
    # The most bytes (names + values) of the headers one allow may set upstream: an identity that would need more
    # is denied (403 identity_too_large) rather than sent on to fail with a 431 at the upstream.
    max_bytes: int = Field(default=8192, ge=512, le=65536)

    @field_validator(*IDENTITY_HEADERS)
    @classmethod
    def _names(cls, value: str) -> str:
        return header_name(value)

    @field_validator("strip_prefixes")
    @classmethod
    def _prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must list at least one prefix (identity headers must be stripped from requests)")
        problems: list[Problem] = [
            ((i,), str(exc)) for i, prefix in enumerate(value) if (exc := _prefix_problem(prefix))
        ]
        if problems:
            raise Problems(problems)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HeadersConfig:
        problems: list[Problem] = []
        owner: dict[str, str] = {}
        for key in IDENTITY_HEADERS:
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
            raise Problems(problems)
        return self
