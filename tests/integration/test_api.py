"""The SessionService API on a served process (``python -m sidecar serve``) against a real Valkey.

Driven through raw gRPC stubs (status codes, metadata) and through both Python clients (sidecar.client).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.api.v1 import session_pb2, session_pb2_grpc
from sidecar.client import KEEP, AsyncSessionClient, SessionClient
from sidecar.errors import ApiAuthError, BadInput, RuntimeFailure
from tests.support.processes import free_port, stop, wait_for_port

pytestmark = pytest.mark.integration

API_TOKEN = "api-" + secrets.token_urlsafe(24)


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, token: str = API_TOKEN) -> SessionClient:
        return SessionClient(self.target, token, timeout=10)


def serve(workdir: Path, redis_url: str, *, api: bool, prefix: str) -> Served:
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "api-token"
    token_file.write_text(API_TOKEN + "\n")
    port = free_port()
    config: dict[str, Any] = {
        "listen": {"grpc": f"127.0.0.1:{port}", "http": "", "admin": ""},
        "redis": {"url": redis_url, "key_prefix": prefix},
        "api": {"enabled": api, "token_file": str(token_file) if api else ""},
    }
    config_path = workdir / "sidecar.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = workdir / "sidecar.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--config", str(config_path)],
            env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, 20.0, proc=proc)
    except BaseException:
        stop(proc)
        raise
    return Served(proc, port, log)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, valkey_url: str) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("api")
    running = serve(workdir, valkey_url, api=True, prefix=f"api-{workdir.name[-8:]}:")
    try:
        yield running
    finally:
        stop(running.proc)
        assert "Traceback" not in running.log.read_text(errors="replace")


@pytest.fixture
def stub(served: Served) -> Iterator[Any]:
    with grpc.insecure_channel(served.target) as channel:
        yield session_pb2_grpc.SessionServiceStub(channel)


@pytest.fixture
def client(served: Served) -> Iterator[SessionClient]:
    with served.client() as sessions:
        yield sessions


def auth(token: str = API_TOKEN) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def status_of(call: Any, request: Any, metadata: Any = None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10, metadata=metadata)
    code: grpc.StatusCode = caught.value.code()
    return code


def user() -> str:
    return "user-" + secrets.token_hex(6)


def check(port: int, cookie: str) -> Any:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.scheme, http.host, http.path = "GET", "http", "app", "/x"
    http.header_map.headers.append(base_pb2.HeaderValue(key="cookie", raw_value=cookie.encode()))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)


def injected(response: Any) -> dict[str, str]:
    return {h.header.key: h.header.value for h in response.ok_response.headers}


# --- authentication ----------------------------------------------------------------------------------------


def test_a_call_without_a_token_is_unauthenticated(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListUser(session_pb2.ListUserRequest(user_id="alice"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "missing or invalid bearer token"


@pytest.mark.parametrize(
    "metadata",
    [
        auth("wrong-" + "x" * 30),
        auth(API_TOKEN + "x"),
        auth(API_TOKEN[:-1]),
        (("authorization", f"Basic {API_TOKEN}"),),
        (("authorization", API_TOKEN),),
        (("authorization", "Bearer "),),
        (("authorization", f"Bearer {API_TOKEN}"), ("authorization", f"Bearer {API_TOKEN}")),
    ],
    ids=["wrong", "longer", "shorter", "basic-scheme", "no-scheme", "empty", "repeated"],
)
def test_a_wrong_token_is_unauthenticated(stub: Any, metadata: Any) -> None:
    assert status_of(stub.Create, session_pb2.CreateRequest(user_id="mallory"), metadata) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_every_rpc_is_guarded(stub: Any) -> None:
    requests = {
        "Create": session_pb2.CreateRequest(user_id="x"),
        "Get": session_pb2.GetRequest(token="x"),
        "Rotate": session_pb2.RotateRequest(token="x"),
        "Revoke": session_pb2.RevokeRequest(token="x"),
        "RevokeSession": session_pb2.RevokeSessionRequest(user_id="x", session_id="y"),
        "RevokeUser": session_pb2.RevokeUserRequest(user_id="x"),
        "ListUser": session_pb2.ListUserRequest(user_id="x"),
    }
    for method, request in requests.items():
        assert status_of(getattr(stub, method), request, auth("nope-" + "y" * 30)) == (
            grpc.StatusCode.UNAUTHENTICATED
        ), method


def test_the_clients_raise_api_auth_error_for_a_wrong_token(served: Served) -> None:
    with served.client("wrong-" + "z" * 30) as sessions, pytest.raises(ApiAuthError):
        sessions.list_user("alice")

    async def run() -> None:
        async with AsyncSessionClient(served.target, "wrong-" + "z" * 30) as sessions:
            with pytest.raises(ApiAuthError):
                await sessions.create("alice")

    asyncio.run(run())


def test_check_and_health_need_no_token(served: Served, client: SessionClient) -> None:
    with grpc.insecure_channel(served.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "envoy.service.auth.v3.Authorization", "sidecar.session.v1.SessionService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    assert check(served.port, "SESSION=nothing").denied_response.status.code == 401

    issued = client.create("carol", roles=("dev",))  # the API and the request path share the key ring and store
    response = check(served.port, f"SESSION={issued.token}")
    assert response.HasField("ok_response")
    assert injected(response)["x-user-id"] == "carol"
    assert injected(response)["x-session-id"] == issued.session.session_id


def test_the_api_is_not_registered_when_disabled(tmp_path: Path, valkey_url: str) -> None:
    running = serve(tmp_path, valkey_url, api=False, prefix=f"off-{tmp_path.name[-8:]}:")
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = session_pb2_grpc.SessionServiceStub(channel)
            for metadata in (None, auth()):
                code = status_of(stub.ListUser, session_pb2.ListUserRequest(user_id="alice"), metadata)
                assert code == grpc.StatusCode.UNIMPLEMENTED
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as caught:
                health.Check(health_pb2.HealthCheckRequest(service="sidecar.session.v1.SessionService"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert check(running.port, "SESSION=nothing").denied_response.status.code == 401
        with running.client() as sessions, pytest.raises(RuntimeFailure, match=r"api\.enabled"):
            sessions.list_user("alice")
    finally:
        stop(running.proc)
    log = running.log.read_text()
    assert "SessionService API disabled" in log
    assert API_TOKEN not in log


# --- the lifecycle -----------------------------------------------------------------------------------------


def test_create_get_rotate_revoke(served: Served, client: SessionClient) -> None:
    alice = user()
    before = datetime.now(UTC) - timedelta(seconds=1)
    issued = client.create(alice, email="alice@example.com", roles=("dev",), attributes={"team": "blue"})
    info = issued.session
    assert info.user_id == alice and info.email == "alice@example.com"
    assert info.roles == ("dev",) and dict(info.attributes) == {"team": "blue"}
    assert before <= info.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert info.created_at.tzinfo is not None and info.last_seen_at == info.created_at
    assert timedelta(minutes=29) <= info.expires_at - info.created_at <= timedelta(minutes=30)
    assert issued.set_cookie.startswith(f"SESSION={issued.token};")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"):
        assert attribute in issued.set_cookie
    assert issued.token not in repr(issued)

    assert client.get(issued.token) == info

    rotated = client.rotate(issued.token, roles=("dev", "admin"))
    assert rotated is not None and rotated.token != issued.token
    assert rotated.session.session_id == info.session_id  # same handle
    assert rotated.session.roles == ("dev", "admin")
    assert rotated.session.email == "alice@example.com" and dict(rotated.session.attributes) == {"team": "blue"}
    assert rotated.set_cookie.startswith(f"SESSION={rotated.token};")
    assert client.get(issued.token) is None  # the old token is dead at once
    assert client.rotate(issued.token) is None  # and cannot be rotated again
    assert client.get(rotated.token) == rotated.session
    response = check(served.port, f"SESSION={rotated.token}")
    assert injected(response)["x-user-roles"] == "dev,admin"
    assert check(served.port, f"SESSION={issued.token}").denied_response.status.code == 401

    again = client.rotate(rotated.token, email=None, roles=(), attributes={})
    assert again is not None
    assert again.session.email is None and again.session.roles == () and dict(again.session.attributes) == {}
    kept = client.rotate(again.token, email="new@example.com")
    assert kept is not None and kept.session.email == "new@example.com" and kept.session.roles == ()

    assert client.revoke(kept.token) is True
    assert client.get(kept.token) is None
    assert client.revoke(kept.token) is False
    assert check(served.port, f"SESSION={kept.token}").denied_response.status.code == 401


def test_not_found_statuses(stub: Any, client: SessionClient) -> None:
    issued = client.create(user())
    assert client.revoke(issued.token)
    assert status_of(stub.Get, session_pb2.GetRequest(token=issued.token), auth()) == grpc.StatusCode.NOT_FOUND
    assert status_of(stub.Rotate, session_pb2.RotateRequest(token=issued.token), auth()) == (grpc.StatusCode.NOT_FOUND)


def test_revoke_user_counts_and_spares_other_users(served: Served, client: SessionClient) -> None:
    bob, eve = user(), user()
    bobs = [client.create(bob) for _ in range(3)]
    eves = client.create(eve)
    assert client.revoke_user(bob) == 3
    assert all(client.get(issued.token) is None for issued in bobs)
    assert client.get(eves.token) is not None
    assert check(served.port, f"SESSION={eves.token}").HasField("ok_response")
    assert client.revoke_user(bob) == 0
    assert [s.session_id for s in client.list_user(eve)] == [eves.session.session_id]


def test_revoke_session_by_handle(client: SessionClient) -> None:
    dave, other = user(), user()
    laptop, phone = client.create(dave), client.create(dave)
    assert client.revoke_session(other, laptop.session.session_id) is False  # the handle is per user
    assert client.revoke_session(dave, laptop.session.session_id) is True
    assert client.get(laptop.token) is None
    assert client.get(phone.token) is not None
    assert client.revoke_session(dave, laptop.session.session_id) is False


def test_list_user_never_contains_tokens(stub: Any, client: SessionClient) -> None:
    frank = user()
    issued = [client.create(frank, roles=("r",)) for _ in range(2)]
    response = stub.ListUser(session_pb2.ListUserRequest(user_id=frank), timeout=10, metadata=auth())
    raw = response.SerializeToString()
    for one in issued:
        assert one.token.encode() not in raw
    listed = client.list_user(frank)
    assert [s.session_id for s in listed] == [one.session.session_id for one in issued]  # oldest first
    assert client.list_user(user()) == []


# --- bad input ---------------------------------------------------------------------------------------------


def test_invalid_argument(stub: Any) -> None:
    def code(method: str, request: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, method)(request, timeout=10, metadata=auth())
        return caught.value.code(), caught.value.details()

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    status, details = code("Create", session_pb2.CreateRequest(user_id=""))
    assert status == invalid and "user id" in details
    status, details = code("Create", session_pb2.CreateRequest(user_id="u", email="a@example.com\r\nx-user-id: root"))
    assert status == invalid and "email" in details
    for seconds, nanos in ((0, 0), (-5, 0), (0, -1)):
        request = session_pb2.CreateRequest(
            user_id="u", idle_timeout=duration_pb2.Duration(seconds=seconds, nanos=nanos)
        )
        status, details = code("Create", request)
        assert status == invalid and "idle timeout" in details, (seconds, nanos)
    request = session_pb2.CreateRequest(user_id="u", absolute_timeout=duration_pb2.Duration(seconds=-1))
    assert code("Create", request)[0] == invalid
    assert code("Create", session_pb2.CreateRequest(user_id="u", roles=["a,b"]))[0] == invalid
    assert code("Get", session_pb2.GetRequest(token="not-a-token"))[0] == invalid
    assert code("Revoke", session_pb2.RevokeRequest(token=""))[0] == invalid
    assert code("RevokeUser", session_pb2.RevokeUserRequest(user_id=""))[0] == invalid
    assert code("ListUser", session_pb2.ListUserRequest(user_id=""))[0] == invalid
    assert code("RevokeSession", session_pb2.RevokeSessionRequest(user_id="u", session_id=""))[0] == invalid


def test_invalid_argument_through_the_client(client: SessionClient) -> None:
    issued = client.create(user())
    with pytest.raises(BadInput, match="email"):
        client.create("u", email="a@example.com\nx")
    with pytest.raises(BadInput, match="idle timeout"):
        client.create("u", idle_timeout=timedelta(0))
    with pytest.raises(BadInput, match="absolute timeout"):
        client.create("u", absolute_timeout=-1.0)
    with pytest.raises(BadInput, match="role"):
        client.rotate(issued.token, roles=("bad role",))
    assert client.get(issued.token) is not None  # a refused rotation changes nothing
    assert client.rotate(issued.token, roles=KEEP) is not None


def test_custom_timeouts(client: SessionClient) -> None:
    issued = client.create(user(), idle_timeout=timedelta(minutes=5), absolute_timeout=3600)
    assert issued.set_cookie.split("; ")[1] == "Max-Age=3600"
    left = issued.session.expires_at - issued.session.last_seen_at
    assert left == timedelta(minutes=5)


# --- the async client --------------------------------------------------------------------------------------


def test_async_client_lifecycle(served: Served) -> None:
    async def run() -> None:
        grace = user()
        async with AsyncSessionClient(served.target, API_TOKEN, timeout=10) as sessions:
            first = await sessions.create(grace, email="g@example.com", roles=("dev",), attributes={"k": "v"})
            second = await sessions.create(grace)
            assert await sessions.get(first.token) == first.session
            rotated = await sessions.rotate(first.token, roles=("dev", "ops"))
            assert rotated is not None and rotated.session.session_id == first.session.session_id
            assert await sessions.get(first.token) is None
            assert (await sessions.get(rotated.token)) == rotated.session
            listed = await sessions.list_user(grace)
            assert [s.session_id for s in listed] == [first.session.session_id, second.session.session_id]
            assert await sessions.revoke_session(grace, second.session.session_id) is True
            with pytest.raises(BadInput):
                await sessions.create("")
            assert await sessions.rotate(first.token) is None
            assert await sessions.revoke(rotated.token) is True
            assert await sessions.revoke_user(grace) == 0
            assert await sessions.list_user(grace) == []

    asyncio.run(run())
