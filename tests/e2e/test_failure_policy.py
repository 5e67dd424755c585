"""``redis.failure_policy: stale`` as served: through a real Envoy, a session confirmed shortly before the store
went away keeps its identity; a session revoked before the outage, an unknown one, and one confirmed too long ago
get the 503; once the store is back everything is answered by it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import servers

pytestmark = pytest.mark.e2e

STALE_FOR_SECONDS = 4.0


@pytest.fixture
def stale_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Stack]:
    workdir: Path = tmp_path_factory.mktemp("stale")
    extra = {"redis": {"failure_policy": "stale", "stale_for": f"{STALE_FOR_SECONDS:g}s"}}
    stack = servers.start_stack(workdir, extra_config=extra, name="stale")
    try:
        yield stack
    finally:
        stack.close()


def get(client: httpx.Client, stack: servers.Stack, session: dict[str, Any] | None) -> httpx.Response:
    headers = {"cookie": f"SESSION={session['token']}"} if session else {}
    return client.get(stack.url("/app"), headers=headers)


def test_stale_policy_keeps_confirmed_sessions_through_an_outage_and_nothing_else(
    stale_stack: servers.Stack,
) -> None:
    stack = stale_stack
    alice, bob = stack.create_session("alice"), stack.create_session("bob")
    never_seen = stack.create_session("carol")  # valid, but this sidecar never confirmed it
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        for session in (alice, bob):
            response = get(client, stack, session)
            assert response.status_code == 200 and response.json()["headers"]["x-user-id"] == [session["user_id"]]
        stack.revoke(bob["token"])
        time.sleep(0.3)  # the revocation's invalidation message reaches the sidecar
        stack.stop_valkey()
        try:
            during = get(client, stack, alice)
            assert during.status_code == 200, during.text
            assert during.json()["headers"]["x-user-id"] == ["alice"]
            assert get(client, stack, bob).status_code == 503  # revoked before the outage: never answered
            assert get(client, stack, never_seen).status_code == 503
            assert get(client, stack, None).status_code == 401  # no cookie needs no store
            time.sleep(STALE_FOR_SECONDS + 0.5)
            assert get(client, stack, alice).status_code == 503  # confirmed too long ago
        finally:
            stack.start_valkey()
        deadline = time.monotonic() + 10
        while get(client, stack, alice).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(client, stack, alice).status_code == 200
        assert get(client, stack, bob).status_code == 401
