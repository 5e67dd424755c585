"""What every section model shares: strictness, how a validator reports problems under sub-keys, durations, and
the marks :func:`sidecar.config.redaction.redacted` renders fields by."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from sidecar.core.durations import parse_duration
from sidecar.core.redact import redact_url

HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 tchar: a header name, also an RFC 6265 cookie name

Loc = tuple[str | int, ...]  # a key path: ("routes", 1, "prefix")
Problem = tuple[Loc, str]  # a key path below the validated model, and what is wrong there


class Problems(ValueError):
    """Raised by a validator to report problems under sub-keys of the model it validates."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(message for _, message in problems))


class Shown(enum.Enum):
    """How ``config check`` shows a field (a mark in its type; the redaction reads it, so no list is kept)."""

    DURATION = "a duration: 30m, not 1800.0"
    URL = "a URL with its password hidden"
    HIDDEN = "hidden when set (a secret)"


Duration = Annotated[float, BeforeValidator(parse_duration), Shown.DURATION]
Secret = Annotated[str, Shown.HIDDEN]
Url = Annotated[str, Shown.URL]


def shown(field: FieldInfo) -> Shown | None:
    """The mark in a field's type, if any."""
    return next((mark for mark in field.metadata if isinstance(mark, Shown)), None)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def shown_as(self) -> object | None:
        """What ``config check`` prints for this model instead of its fields, or None to print its fields."""
        return None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Secrets are repr=False already; a URL may hold a password of its own.
        fields = type(self).model_fields
        for name, value in super().__repr_args__():
            field = fields.get(name) if name is not None else None
            marked = field is not None and shown(field) is Shown.URL and isinstance(value, str)
            yield name, redact_url(value) if marked else value


def has_control(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def has_space_or_control(text: str) -> bool:
    return has_control(text) or any(ch.isspace() for ch in text)


def one_of(value: Any, choices: tuple[str, ...]) -> str:
    """``value`` lower-cased when it names one of ``choices`` (case-insensitively)."""
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")


_FLAG: TypeAdapter[bool] = TypeAdapter(bool)


def raw_flag(data: dict[str, Any], key: str) -> bool:
    """A boolean key of a section's raw input as its field will read it; False when unset or not a boolean (the
    field's own validation then names the problem)."""
    try:
        return _FLAG.validate_python(data.get(key, False))
    except ValidationError:
        return False


def misplaced_userinfo(url: str) -> bool:
    """True when an ``@`` follows the end of the URL's authority (the first ``/``, ``?`` or ``#`` after ``://``):
    a password holding one of those characters unencoded, which no URL reader splits where the writer meant.

    Without ``://`` any ``@`` counts: such a value is no URL, and whatever precedes the ``@`` may be a password.
    """
    _, sep, rest = url.partition("://")
    if not sep:
        return "@" in url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return "@" in rest[end:]


def url_for_message(url: str) -> str:
    """``url`` as an error message may show it: quoted with its password redacted, or not at all when the
    redaction could not find the user info for certain."""
    if misplaced_userinfo(url):
        return "(not shown: it may hold a password)"
    return repr(redact_url(url))
