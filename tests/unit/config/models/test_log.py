"""log (and the headers budget)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.support import only_problem, write


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("log: {level: trace}", "log.level: must be one of debug, info, warning, error"),
    ],
)
def test_invalid_values_are_reported_with_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith(expected), problem
    assert "pydantic" not in problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("log: {format: xml}", "log.format: must be one of json, text"),
        ("log: {sample_allows: 2}", "log.sample_allows:"),
        ("headers: {max_bytes: 100}", "headers.max_bytes:"),
    ],
)
def test_bad_log_and_budget_settings_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert only_problem(write(tmp_path, text + "\n")).startswith(expected)
