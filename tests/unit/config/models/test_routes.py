"""deny and routes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.core.session import role_problem
from tests.unit.config.support import only_problem, write


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("deny: {login_url: /login}", 'deny.login_url: must be "" or an absolute http(s) URL'),
        ("deny: {login_url: 'ftp://x/'}", 'deny.login_url: must be "" or an absolute http(s) URL'),
        ("deny: {login_url: 'https://'}", 'deny.login_url: must be "" or an absolute http(s) URL'),
        ("deny: {login_url: 'https://a b/'}", 'deny.login_url: must be "" or an absolute http(s) URL'),
        ("routes: [{prefix: admin}]", 'routes[0].prefix: must start with "/"'),
        ("routes: [{prefix: '/a?b'}]", "routes[0].prefix: invalid path prefix '/a?b'"),
        (
            "routes: [{prefix: /a, public: true, roles: [x]}]",
            "routes[0].roles: a public route cannot require roles",
        ),
        ("routes: [{prefix: /a, roles: ['a,b']}]", "routes[0].roles[0]: invalid role 'a,b'"),
        ("routes: [{prefix: /a, roles: ['a b']}]", "routes[0].roles[0]: invalid role 'a b'"),
        ("routes: [{prefix: /a, roles: ['']}]", "routes[0].roles[0]: must not be empty"),
        ("routes: [{prefix: /a}, {prefix: /a}]", "routes[1].prefix: duplicate of routes[0].prefix"),
    ],
)
def test_invalid_values_are_reported_with_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith(expected), problem
    assert "pydantic" not in problem


@pytest.mark.parametrize(
    "role",
    [
        "admin",
        "a\u00a0b",  # a no-break space inside: a session may carry it, so a route may require it
        "admin\u202e",  # a bidi override: no session can carry it
        "x" * 5000,  # longer than a header value may be
        "\x85admin",  # a C1 control
        "a,b",
        "a b",
        " admin",
    ],
    ids=["plain", "nbsp-inside", "bidi-override", "too-long", "c1-control", "comma", "space", "leading-space"],
)
def test_a_route_may_require_exactly_the_roles_a_session_can_carry(role: str) -> None:
    environ = {"SIDECAR_ROUTES": json.dumps([{"prefix": "/a", "roles": [role]}])}
    if role_problem(role) is None:
        assert load_config(environ=environ).routes[0].roles == (role,)
    else:
        problem = only_problem(environ=environ)
        assert problem.startswith("routes[0].roles[0]: invalid role ") and role_problem(role) in problem, problem


def test_a_route_role_problem_quotes_the_role_cut_short() -> None:
    problem = only_problem(environ={"SIDECAR_ROUTES": json.dumps([{"prefix": "/a", "roles": ["r" * 100_000]}])})
    assert problem.startswith("routes[0].roles[0]: invalid role 'rrrr") and len(problem) < 200, problem[:300]
