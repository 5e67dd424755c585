"""deny: where a denied browser is sent, and routes: which paths are public and which need roles.

A route's roles are held to ``sidecar.core.session.role_problem``, the rule every session's roles meet: a route
cannot require a role no session can carry.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import field_validator, model_validator

from sidecar.config.models.base import (
    Problem,
    Problems,
    Section,
    Url,
    has_space_or_control,
    misplaced_userinfo,
    url_for_message,
)
from sidecar.core.session import role_problem, shown

MAX_ROUTES = 10_000


class DenyConfig(Section):
    login_url: Url = ""

    @field_validator("login_url")
    @classmethod
    def _login_url(cls, value: str) -> str:
        if value == "":
            return value
        bad = has_space_or_control(value) or misplaced_userinfo(value)
        try:
            parts = urlsplit(value)
        except ValueError:
            bad = True
        else:
            bad = bad or parts.scheme not in ("http", "https") or not parts.netloc or not parts.hostname
        if bad:
            raise ValueError(
                f'must be "" or an absolute http(s) URL, e.g. https://login.example.com/ (got {url_for_message(value)})'
            )
        return value


def _route_role_problem(role: str) -> str | None:
    if not role:
        return "must not be empty"
    if (problem := role_problem(role)) is not None:
        return f"invalid role {shown(role)}: {problem}"
    return None


class RouteConfig(Section):
    prefix: str
    public: bool = False
    roles: tuple[str, ...] = ()

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError('must start with "/"')
        if has_space_or_control(value) or "?" in value or "#" in value:
            raise ValueError(f"invalid path prefix {value!r}: no whitespace, control characters, '?' or '#'")
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[Problem] = [((i,), msg) for i, role in enumerate(value) if (msg := _route_role_problem(role))]
        if problems:
            raise Problems(problems)
        return value

    @model_validator(mode="after")
    def _public_without_roles(self) -> RouteConfig:
        if self.public and self.roles:
            raise Problems([(("roles",), "a public route cannot require roles (drop public or roles)")])
        return self
