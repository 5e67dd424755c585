"""Log lines: JSON or text, structured fields on top, and nothing unsafe gets through (tokens, CR/LF, bytes)."""

from __future__ import annotations

import json
import logging
import secrets
import sys

import pytest

from sidecar.core.tokens import KeyRing, mint_token
from sidecar.logs import JsonFormatter, TextFormatter, configure_logging, formatter, scrub

RING = KeyRing.of([("k1", b"k" * 32)])


def record(message: str, *args: object, fields: dict[str, object] | None = None) -> logging.LogRecord:
    made = logging.LogRecord("sidecar.test", logging.INFO, __file__, 1, message, args, None)
    if fields is not None:
        made.fields = fields
    return made


def test_json_line_has_time_level_logger_message_and_the_fields_on_top() -> None:
    line = JsonFormatter().format(record("decision", fields={"status": 401, "user_id": None}))
    data = json.loads(line)
    assert data["level"] == "info" and data["logger"] == "sidecar.test" and data["msg"] == "decision"
    assert data["status"] == 401 and data["user_id"] is None
    assert data["ts"].endswith("Z")


def test_fields_never_override_the_standard_keys() -> None:
    data = json.loads(JsonFormatter().format(record("real", fields={"msg": "forged", "level": "error"})))
    assert data["msg"] == "real" and data["level"] == "info"


def test_a_session_token_anywhere_in_a_line_is_redacted() -> None:
    token = mint_token(RING, secrets.token_bytes(32), "abc123")
    for fmt in (JsonFormatter(), TextFormatter()):
        line = fmt.format(record("saw %s", f"SESSION={token}", fields={"path": f"/x/{token}"}))
        assert token not in line
        assert token[:30] not in line
        assert "<redacted>" in line


def test_a_truncated_token_is_redacted_too() -> None:
    token = mint_token(RING, secrets.token_bytes(32), "abc123")
    assert token[:-10] not in scrub(f"cookie {token[:-10]}")


def test_cr_lf_in_a_field_cannot_start_a_second_line() -> None:
    for fmt in (JsonFormatter(), TextFormatter()):
        line = fmt.format(record("decision", fields={"path": '/a\r\n{"forged": 1}'}))
        assert "\n" not in line and "\r" not in line


def test_non_utf8_request_bytes_are_escaped_not_fatal() -> None:
    path = b"/caf\xe9".decode("utf-8", "surrogateescape")
    for fmt in (JsonFormatter(), TextFormatter()):
        line = fmt.format(record("decision", fields={"path": path}))
        line.encode("utf-8")  # a stream handler can write it
        assert "udce9" in line


def test_text_lines_quote_values_with_spaces_and_show_none_as_dash() -> None:
    line = TextFormatter().format(record("decision", fields={"reason": "session_required", "host": "a b", "u": None}))
    assert line.endswith('reason=session_required host="a b" u=-')


def test_exceptions_are_kept_in_the_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    data = json.loads(JsonFormatter().format(made))
    assert "ValueError: boom" in data["exc"]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        formatter("xml")


def test_configure_logging_replaces_the_handlers_and_sets_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("warning", "json")
        logging.getLogger("sidecar.x").info("hidden")
        logging.getLogger("sidecar.x").warning("shown")
        lines = capsys.readouterr().err.strip().splitlines()
        assert [json.loads(line)["msg"] for line in lines] == ["shown"]
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
