"""The HTTP listener fixtures (``problems``, ``served``) of tests/support/http_fixtures.py."""

from tests.support.http_fixtures import problems, served

__all__ = ["problems", "served"]
