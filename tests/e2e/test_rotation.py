"""Session rotation through the SessionService API, seen at the edge: a real Envoy in front of the echo upstream.

The stack's sidecar serves the API (``api_token``); a login service would call it exactly like this.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sidecar.client import AsyncSessionClient, SessionClient
from tests.support import servers

pytestmark = pytest.mark.e2e

STACK_OPTIONS: dict[str, Any] = {"api_token": "e2e-" + secrets.token_urlsafe(24)}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10.0, follow_redirects=False) as c:
        yield c


@pytest.fixture(scope="module")
def sessions(stack: servers.Stack) -> Iterator[SessionClient]:
    with SessionClient(stack.grpc_target, stack.api_token, timeout=10) as client:
        yield client


def get(http: httpx.Client, stack: servers.Stack, token: str, path: str = "/hello") -> httpx.Response:
    http.cookies.clear()
    return http.get(stack.url(path), headers=[("cookie", f"SESSION={token}")])


def upstream_headers(response: httpx.Response) -> dict[str, list[str]]:
    assert response.status_code == 200, f"{response.status_code} {response.text[:300]!r}"
    headers: dict[str, list[str]] = response.json()["headers"]
    return headers


def assert_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, f"{response.status_code} {response.text[:300]!r}"
    assert response.json().get("error") == "unauthenticated"


def test_rotation_kills_the_old_token_at_the_edge(
    stack: servers.Stack, sessions: SessionClient, http: httpx.Client
) -> None:
    issued = sessions.create("alice", email="alice@example.com", roles=("dev",))
    before = upstream_headers(get(http, stack, issued.token))
    assert before["x-user-id"] == ["alice"]
    assert before["x-session-id"] == [issued.session.session_id]

    rotated = sessions.rotate(issued.token)
    assert rotated is not None and rotated.token != issued.token

    assert_unauthenticated(get(http, stack, issued.token))
    after = upstream_headers(get(http, stack, rotated.token))
    assert after["x-user-id"] == ["alice"]
    assert after["x-session-id"] == [issued.session.session_id]  # the same session, a new token
    assert after["x-user-roles"] == ["dev"]
    assert after["x-user-email"] == ["alice@example.com"]


def test_a_privilege_change_rotates_into_the_new_roles(
    stack: servers.Stack, sessions: SessionClient, http: httpx.Client
) -> None:
    issued = sessions.create("bob", roles=("dev",))
    assert get(http, stack, issued.token, "/admin/panel").status_code == 403
    promoted = sessions.rotate(issued.token, roles=("dev", "admin"))
    assert promoted is not None
    headers = upstream_headers(get(http, stack, promoted.token, "/admin/panel"))
    assert headers["x-user-roles"] == ["dev,admin"]
    assert headers["x-session-id"] == [issued.session.session_id]
    assert_unauthenticated(get(http, stack, issued.token, "/admin/panel"))  # the pre-promotion token is dead


def test_revocations_through_the_async_client(stack: servers.Stack, http: httpx.Client) -> None:
    async def run() -> None:
        async with AsyncSessionClient(stack.grpc_target, stack.api_token, timeout=10) as client:
            laptop = await client.create("carol")
            phone = await client.create("carol")
            assert get(http, stack, laptop.token).status_code == 200
            assert await client.revoke_session("carol", laptop.session.session_id) is True
            assert_unauthenticated(get(http, stack, laptop.token))
            assert get(http, stack, phone.token).status_code == 200
            assert await client.revoke_user("carol") == 1
            assert_unauthenticated(get(http, stack, phone.token))

    asyncio.run(run())


def test_logout_through_the_api(stack: servers.Stack, sessions: SessionClient, http: httpx.Client) -> None:
    issued = sessions.create("dave")
    assert get(http, stack, issued.token).status_code == 200
    assert sessions.revoke(issued.token) is True
    assert_unauthenticated(get(http, stack, issued.token))
