"""The fault tests' summary: each test records one row; ``pytest tests/faults`` prints them as a table at the end."""

from __future__ import annotations

from typing import Any

import pytest

SUMMARIES = pytest.StashKey[list[dict[str, Any]]]()


@pytest.fixture
def fault_summaries(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The session-wide list a fault test appends its summary row to (an ordered dict of figures)."""
    return request.config.stash.setdefault(SUMMARIES, [])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(SUMMARIES, [])
    if not rows:
        return
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    terminalreporter.section("fault tests (issue #4)")
    terminalreporter.write_line("| " + " | ".join(columns) + " |")
    terminalreporter.write_line("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        terminalreporter.write_line("| " + " | ".join(str(row.get(key, "")) for key in columns) + " |")
