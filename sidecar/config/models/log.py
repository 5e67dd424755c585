"""log: level, format, and how many allows are logged."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from sidecar.config.models.base import Section, one_of

_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("json", "text")


class LogConfig(Section):
    level: str = "info"
    format: str = "json"  # json: one object per line (decision logs are structured); text: for a terminal
    # Every denial is logged; this fraction of allows too (0: none, 1: all).
    sample_allows: float = Field(default=0.01, ge=0.0, le=1.0)

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        return one_of(value, _LOG_FORMATS)

    @field_validator("level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return one_of(value, _LOG_LEVELS)
