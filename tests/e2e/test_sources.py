"""CONTRACT.md "Session sources", through a real Envoy in gRPC and HTTP modes, with the real frameworks writing
the sessions: each test logs a user in through the framework's own app (examples/frameworks/<kind>) on the stack's
Valkey, then sends the cookie that app set through Envoy to the echo upstream.

Spring Session is not installable here: its hash is built around real Spring Security bytes
(../shared/testdata/spring-security), its times with the tiny JDK writer of tests/support/spring_session.py.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support import frameworks, servers, spring_session

pytestmark = pytest.mark.e2e

KINDS = frameworks.KINDS
RAILS_NAMESPACE = "session"
SPRING_PREFIX = "spring:session:"
# Flask signs its ids (the sidecar verifies them with the app's secret); Rails under the namespace configured below.
WRITER_OPTIONS: dict[str, dict[str, Any]] = {"flask": {"use_signer": True}, "rails": {"namespace": RAILS_NAMESPACE}}


def sources_config(secret_file: Path) -> list[dict[str, Any]]:
    own_keys = {"email": "email", "roles": "roles"}  # where the example apps keep them (their own choice)
    return [
        {"kind": "native"},
        {"kind": "spring-session"},
        {"kind": "express", "secrets_file": str(secret_file), **own_keys},
        {"kind": "django", **own_keys},
        {"kind": "flask", "secrets_file": str(secret_file), **own_keys},
        {"kind": "php", **own_keys},
        {"kind": "rails", "key_prefix": f"{RAILS_NAMESPACE}:", **own_keys},
    ]


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, servers.Stack]]:
    """Two sidecars + Envoys on one Valkey and echo: one asked over gRPC, one over HTTP (two replicas)."""
    workdir = tmp_path_factory.mktemp("sources")
    secret_file = workdir / "app-secrets"
    secret_file.write_text(f"an-older-rotated-out-secret\n{frameworks.DEMO_SECRET}\n")
    extra = {"sources": sources_config(secret_file), "cache": {"enabled": True}}
    grpc = servers.start_stack(workdir, extra_config=extra, name="grpc", mode="grpc")
    try:
        http = servers.start_stack(workdir, extra_config=extra, name="http", mode="http", share=grpc)
        try:
            yield {"grpc": grpc, "http": http}
        finally:
            http.close()
    finally:
        grpc.close()


@pytest.fixture(scope="module")
def valkey(stacks: dict[str, servers.Stack]) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=stacks["grpc"].valkey.port)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def writers(stacks: dict[str, servers.Stack]) -> Iterator[dict[str, frameworks.Writer]]:
    """Each framework's app, started once (a kind that cannot run here is absent; its tests skip)."""
    port = stacks["grpc"].valkey.port
    options = WRITER_OPTIONS
    with contextlib.ExitStack() as stack:
        running = {}
        for kind in KINDS:
            if frameworks.skip_reason(kind) is None:
                running[kind] = stack.enter_context(frameworks.start(kind, port, **options.get(kind, {})))
        yield running


def writer_of(writers: dict[str, frameworks.Writer], kind: str) -> frameworks.Writer:
    if kind not in writers:
        pytest.skip(f"{kind}: {frameworks.skip_reason(kind)}")
    return writers[kind]


def new_user() -> str:
    """A fresh user id; numeric, because the Django app logs in the user whose primary key it is."""
    return str(1000 + secrets.randbelow(10**9))


def through(stack: servers.Stack, cookie: str, path: str = "/api/x") -> httpx.Response:
    return httpx.get(stack.url(path), headers={"Cookie": cookie}, timeout=10, follow_redirects=False)


def identity_of(response: httpx.Response) -> tuple[str, str, set[str]]:
    assert response.status_code == 200, f"{response.status_code} {response.headers} {response.text[:300]}"
    headers = response.json()["headers"]
    roles = headers.get("x-user-roles", [""])[0]
    return headers["x-user-id"][0], headers.get("x-user-email", [""])[0], set(filter(None, roles.split(",")))


def reads(valkey: redis.Redis) -> int:
    """Session reads so far on the stack's Valkey (the framework sources' GETRANGE and HSTRLEN)."""
    stats: dict[str, Any] = valkey.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("getrange", "hstrlen"))


@pytest.mark.parametrize("mode", ["grpc", "http"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_user_logged_in_by_the_framework_reaches_the_upstream_with_its_identity(
    stacks: dict[str, servers.Stack], writers: dict[str, frameworks.Writer], kind: str, mode: str
) -> None:
    writer = writer_of(writers, kind)
    user = new_user()
    name, value = writer.login(user, email=f"{kind}{user}@example.com", roles=("admin", "dev"))
    assert identity_of(through(stacks[mode], f"{name}={value}")) == (
        user,
        f"{kind}{user}@example.com",
        {"admin", "dev"},
    )


@pytest.mark.parametrize("kind", KINDS)
def test_logout_in_the_framework_is_denied_on_every_replica_at_once(
    stacks: dict[str, servers.Stack], writers: dict[str, frameworks.Writer], kind: str
) -> None:
    writer = writer_of(writers, kind)
    user = new_user()
    name, value = writer.login(user)
    for stack in stacks.values():
        assert identity_of(through(stack, f"{name}={value}"))[0] == user
    writer.logout(value)
    logged_out = time.monotonic()
    for stack in stacks.values():
        assert through(stack, f"{name}={value}").status_code == 401
    assert time.monotonic() - logged_out < 1.0  # both answers, each on the first request after the logout


@pytest.mark.parametrize("kind", ["express", "flask"])
def test_a_tampered_signed_cookie_is_denied_without_a_lookup(
    stacks: dict[str, servers.Stack], writers: dict[str, frameworks.Writer], valkey: redis.Redis, kind: str
) -> None:
    writer = writer_of(writers, kind)
    name, value = writer.login(new_user())
    flipped = value[:-2] + ("A" if value[-2] != "A" else "B") + value[-1]
    unsigned = value.split(".")[0] if kind == "flask" else value.replace("s%3A", "", 1).rsplit(".", 1)[0]
    before = reads(valkey)
    for cookie in (flipped, unsigned):
        assert through(stacks["grpc"], f"{name}={cookie}").status_code == 401
    assert reads(valkey) == before


@pytest.mark.parametrize("kind", ["django", "php", "rails"])
def test_an_id_without_the_frameworks_format_is_denied_without_a_lookup_and_an_unknown_one_after_one(
    stacks: dict[str, servers.Stack], writers: dict[str, frameworks.Writer], valkey: redis.Redis, kind: str
) -> None:
    writer = writer_of(writers, kind)
    name, value = writer.login(new_user())
    before = reads(valkey)
    assert through(stacks["grpc"], f"{name}={value}!").status_code == 401
    assert reads(valkey) == before
    unknown = "".join("0" if ch != "0" else "1" for ch in value)
    assert through(stacks["grpc"], f"{name}={unknown}").status_code == 401
    assert reads(valkey) == before + 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_session_the_framework_expired_is_denied(stacks: dict[str, servers.Stack], kind: str) -> None:
    if (reason := frameworks.skip_reason(kind)) is not None:
        pytest.skip(f"{kind}: {reason}")
    options = WRITER_OPTIONS.get(kind, {})
    with frameworks.start(kind, stacks["grpc"].valkey.port, ttl=2, **options) as writer:
        user = new_user()
        name, value = writer.login(user)
        assert identity_of(through(stacks["grpc"], f"{name}={value}"))[0] == user
        time.sleep(2.3)
        assert through(stacks["grpc"], f"{name}={value}").status_code == 401


@pytest.mark.parametrize("mode", ["grpc", "http"])
def test_a_spring_session_holding_real_spring_security_bytes_reaches_the_upstream(
    stacks: dict[str, servers.Stack], valkey: redis.Redis, mode: str
) -> None:
    context = spring_session.sample("7.2.x", "core.context.TransientSecurityContext")  # user "user", ROLE_USER
    sid = "7b0c9e4a-2d1f-4c3b-9a8e-6f5d4c3b2a19"
    key = f"{SPRING_PREFIX}sessions:{sid}"
    valkey.hset(key, mapping=spring_session.session_hash(context, int(time.time() * 1000)))  # type: ignore[arg-type]
    cookie = "SESSION=" + base64.b64encode(sid.encode()).decode()  # Spring's DefaultCookieSerializer
    try:
        assert identity_of(through(stacks[mode], cookie))[:3] == ("user", "", {"ROLE_USER"})
        valkey.delete(key)  # the application's logout (RedisSessionRepository.deleteById)
        assert through(stacks[mode], cookie).status_code == 401
    finally:
        valkey.delete(key)


def test_native_sessions_work_beside_the_other_sources(stacks: dict[str, servers.Stack]) -> None:
    session = stacks["grpc"].create_session("native-ann", roles=("dev",))
    assert identity_of(through(stacks["grpc"], f"SESSION={session['token']}"))[0] == "native-ann"


def test_the_first_source_whose_cookie_resolves_wins_whatever_the_header_order(
    stacks: dict[str, servers.Stack], writers: dict[str, frameworks.Writer]
) -> None:
    express, php = writer_of(writers, "express"), writer_of(writers, "php")
    from_express, from_php = new_user(), new_user()
    e_name, e_value = express.login(from_express)
    p_name, p_value = php.login(from_php)
    # express is listed before php in sources: its session wins, in either cookie order.
    assert identity_of(through(stacks["grpc"], f"{p_name}={p_value}; {e_name}={e_value}"))[0] == from_express
    express.logout(e_value)
    assert identity_of(through(stacks["grpc"], f"{p_name}={p_value}; {e_name}={e_value}"))[0] == from_php
