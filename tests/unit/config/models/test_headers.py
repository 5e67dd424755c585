"""headers: identity header names and the prefixes stripped from every request."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.config.support import only_problem, write


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "headers: {email: x-email}",
            "headers.email: 'x-email' does not start with any of headers.strip_prefixes (x-user-, x-session-)",
        ),
        ("headers: {roles: x-user-id}", "headers.roles: same header as headers.user_id ('x-user-id')"),
        (
            "headers: {user_id: X-User-Id}",
            "headers.user_id: invalid header name 'X-User-Id': must be lowercase",
        ),
        (
            "headers: {user_id: 'x-user id'}",
            "headers.user_id: invalid header name 'x-user id': must be an HTTP token",
        ),
        ("headers: {strip_prefixes: []}", "headers.strip_prefixes: must list at least one prefix"),
        ("headers: {strip_prefixes: [x-user-, '']}", "headers.strip_prefixes[1]: invalid header prefix ''"),
    ],
)
def test_invalid_values_are_reported_with_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith(expected), problem
    assert "pydantic" not in problem
