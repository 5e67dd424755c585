"""The effective config as ``config check`` prints it: plain YAML-able data, secrets hidden, durations as written.

Nothing here lists fields: each is rendered by the mark in its type (``Duration``, ``Url``, ``Secret`` of
``models.base``), a model may stand for itself (``SigningKey``: ``kid:<redacted>``), and excluded fields (the API
token, an assertion key's PEM) are left out as ``model_dump`` leaves them out.
"""

from __future__ import annotations

from pydantic.fields import FieldInfo

from sidecar.config.models.base import Section, Shown, shown
from sidecar.config.models.root import Config
from sidecar.core.durations import format_duration
from sidecar.core.redact import REDACTED, redact_url


def _field(field: FieldInfo, value: object) -> object:
    mark = shown(field)
    if mark is Shown.DURATION and isinstance(value, float):
        return format_duration(value)
    if mark is Shown.URL and isinstance(value, str):
        return redact_url(value)
    if mark is Shown.HIDDEN:
        return REDACTED if value else ""
    return _plain(value)


def _plain(value: object) -> object:
    if isinstance(value, Section):
        return _section(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _section(model: Section) -> object:
    if (own := model.shown_as()) is not None:
        return own
    return {
        name: _field(field, getattr(model, name))
        for name, field in type(model).model_fields.items()
        if not field.exclude
    }


def redacted(config: Config) -> dict[str, object]:
    """The effective config as plain YAML-able data: durations as ``30m``, passwords and secrets hidden."""
    data = _section(config)
    assert isinstance(data, dict)  # Config has fields, not a form of its own
    return data
