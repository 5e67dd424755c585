"""Config: the bound on routes, checked before any route is."""

from __future__ import annotations

from sidecar.config import MAX_ROUTES, load_config
from tests.unit.config.support import only_problem


def test_more_routes_than_the_bound_are_refused_before_any_is_validated() -> None:
    routes = "[" + ",".join(f"{{prefix: /r{i}}}" for i in range(MAX_ROUTES + 1)) + "]"
    problem = only_problem(environ={"SIDECAR_ROUTES": routes})
    assert problem.startswith(f"routes: at most {MAX_ROUTES:,} routes (got {MAX_ROUTES + 1:,})")


def test_routes_up_to_the_bound_load() -> None:
    routes = "[" + ",".join(f"{{prefix: /r{i}}}" for i in range(MAX_ROUTES)) + "]"
    assert len(load_config(environ={"SIDECAR_ROUTES": routes}).routes) == MAX_ROUTES
