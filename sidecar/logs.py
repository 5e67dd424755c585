"""Log output: one JSON object per line (``log.format: json``, the default) or ``key=value`` text for a terminal.

Structured fields travel in ``extra={"fields": {...}}`` and become top-level keys. Whatever a message holds,
the line is rendered safely: non-ASCII and control characters are escaped (a CR/LF in a client-sent path cannot
forge a second log line, and non-UTF-8 bytes cannot break the stream), and anything shaped like a session token
is replaced by ``<redacted>``: a defence in depth, since no code path is meant to log a token in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from sidecar.core.redact import REDACTED

# s1.<kid>.<tag>.<body>.<mac> (sidecar.core.tokens), also when cut short: enough of it to be usable is hidden.
_TOKEN_SHAPE = re.compile(r"s1\.[A-Za-z0-9_-]{1,16}\.[0-9a-f]{6}\.[A-Za-z0-9_-]{16,}(?:\.[A-Za-z0-9_-]*)?")
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.,:/@+*=-]*")


def scrub(text: str) -> str:
    return _TOKEN_SHAPE.sub(REDACTED, text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=str))


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    # Bare when unambiguous, else JSON-quoted (escapes spaces, quotes, control and non-ASCII characters).
    return text if text and _PLAIN_TEXT.fullmatch(text) else json.dumps(text, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        # Lone surrogates (non-UTF-8 request bytes) would make the stream handler fail: show them escaped.
        return scrub(line.encode("utf-8", "backslashreplace").decode("utf-8"))


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {fmt!r} (json or text)")


def configure_logging(level: str, fmt: str = "json") -> None:
    """Send every log record at ``level`` or above to stderr in ``fmt``, replacing any earlier set-up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
