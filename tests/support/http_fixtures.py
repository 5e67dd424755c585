"""Fixtures of the HTTP listener tests (helpers in ``http_wire``), used by the conftest of tests/unit/authz and
tests/unit/httpserver."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.http_wire import Problems, Served, serving


@pytest.fixture
def problems() -> Iterator[Problems]:
    handler = Problems()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
    assert handler.seen == []


@pytest.fixture
async def served(problems: Problems) -> AsyncIterator[Served]:
    async with serving(problems) as running:
        yield running
