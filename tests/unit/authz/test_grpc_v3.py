"""The ext_authz v3 gRPC adapter: translation both ways, and real grpc.aio and sync (threaded) servers answering
Check and Health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from sidecar.authz import grpc_v3
from sidecar.authz.service import AuthzService
from sidecar.core.decision import Allow, Deny, unavailable
from sidecar.grpcserver import ThreadedListener
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.store.memory import MemoryStore
from tests.support.edge import RING, SETTINGS

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def check_request(
    path: str = "/", raw: list[tuple[str, bytes]] | None = None, headers: dict[str, str] | None = None
) -> Any:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.scheme, http.host, http.path = "GET", "https", "app.example.com", path
    for key, value in raw or []:
        http.header_map.headers.append(base_pb2.HeaderValue(key=key, raw_value=value))
    for key, value in (headers or {}).items():
        http.headers[key] = value
    return req


def test_header_map_lines_are_read_in_order_with_duplicates_and_lowercased_names() -> None:
    view = grpc_v3.to_request_view(check_request(raw=[("X-User-Id", b"a"), ("x-user-id", b"b"), ("Cookie", b"A=1")]))
    assert view.headers == (("x-user-id", "a"), ("x-user-id", "b"), ("cookie", "A=1"))
    assert (view.scheme, view.host, view.path) == ("https", "app.example.com", "/")


def test_headers_map_is_used_when_envoy_sends_no_header_map() -> None:
    view = grpc_v3.to_request_view(check_request(headers={"Cookie": "SESSION=x", "x-user-id": "a,b"}))
    assert ("cookie", "SESSION=x") in view.headers
    assert ("x-user-id", "a,b") in view.headers


def test_a_rewritten_cookie_keeps_only_its_utf8_pieces_because_envoy_ignores_raw_value() -> None:
    view = grpc_v3.to_request_view(check_request(raw=[("cookie", b"a=\xff\xfe; c=ok; d=\xc3\xa9")]))
    assert view.first("cookie") == b"a=\xff\xfe; c=ok; d=\xc3\xa9".decode("utf-8", "surrogateescape")
    response = grpc_v3.to_check_response(
        Allow(headers_to_set=(("cookie", view.first("cookie") or ""), ("x-user-id", "u")), headers_to_remove=())
    )
    headers = [(h.header.key, h.header.value) for h in response.ok_response.headers]
    assert headers == [("cookie", "c=ok; d=\u00e9"), ("x-user-id", "u")]


def test_a_rewritten_cookie_with_no_utf8_piece_left_is_removed() -> None:
    bad = b"a=\xff".decode("utf-8", "surrogateescape")
    response = grpc_v3.to_check_response(Allow(headers_to_set=(("cookie", bad),), headers_to_remove=("x-user-id",)))
    assert list(response.ok_response.headers) == []
    assert list(response.ok_response.headers_to_remove) == ["x-user-id", "cookie"]


def test_source_and_context_extensions_reach_the_request_view() -> None:
    req = check_request()
    req.attributes.source.address.socket_address.address = "10.1.2.3"
    req.attributes.context_extensions["assertion_audience"] = "orders"
    view = grpc_v3.to_request_view(req)
    assert view.source == "10.1.2.3" and dict(view.context)["assertion_audience"] == "orders"


def test_an_allow_carries_dynamic_metadata_for_the_access_log() -> None:
    allow = Allow(headers_to_set=(), headers_to_remove=(), user_id="alice", session_id="sid-1", reason="stale")
    metadata = grpc_v3.to_check_response(allow).dynamic_metadata
    assert dict(metadata) == {"decision": "allow", "reason": "stale", "user_id": "alice", "session_id": "sid-1"}
    anonymous = grpc_v3.to_check_response(Allow(headers_to_set=(), headers_to_remove=(), reason="public"))
    assert dict(anonymous.dynamic_metadata) == {"decision": "allow", "reason": "public"}


def test_a_denial_carries_its_reason_and_status_as_dynamic_metadata() -> None:
    deny = Deny(status=401, reason="session_invalid", body=b"{}", headers=())
    metadata = dict(grpc_v3.to_check_response(deny).dynamic_metadata)
    assert metadata == {"decision": "deny", "reason": "session_invalid", "status": 401.0}


def test_allow_becomes_ok_response_with_overwrite_and_removals() -> None:
    response = grpc_v3.to_check_response(
        Allow(headers_to_set=(("x-user-id", "alice"),), headers_to_remove=("x-user-foo",), user_id="alice")
    )
    assert response.status.code == code_pb2.OK
    option = response.ok_response.headers[0]
    assert (option.header.key, option.header.value, option.append_action) == ("x-user-id", "alice", OVERWRITE)
    assert list(response.ok_response.headers_to_remove) == ["x-user-foo"]


@pytest.mark.parametrize(
    ("status", "rpc_code"),
    [
        (401, code_pb2.UNAUTHENTICATED),
        (403, code_pb2.PERMISSION_DENIED),
        (503, code_pb2.UNAVAILABLE),
        (302, code_pb2.PERMISSION_DENIED),
    ],
)
def test_deny_becomes_denied_response_with_status_body_and_headers(status: int, rpc_code: int) -> None:
    deny = Deny(status=status, reason="r", body=b'{"error":"x"}', headers=(("content-type", "application/json"),))
    response = grpc_v3.to_check_response(deny)
    assert response.status.code == rpc_code
    assert response.denied_response.status.code == status
    assert response.denied_response.body == '{"error":"x"}'
    assert response.denied_response.headers[0].header.key == "content-type"


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, SessionManager, MemoryStore]]:
    store = MemoryStore()
    keys = KeyRingSource(store, RING)
    service = AuthzService(SETTINGS, store, keys, deadline=0.15)
    srv = grpc.aio.server()
    grpc_v3.add_to_server(srv, service)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    manager = SessionManager(store, keys, cookie_name="SESSION", idle_timeout=60, absolute_timeout=600)
    try:
        yield f"127.0.0.1:{port}", manager, store
    finally:
        await srv.stop(0)


async def test_check_over_grpc_allows_a_live_session_and_strips_spoofed_headers(
    server: tuple[str, SessionManager, MemoryStore],
) -> None:
    address, manager, _ = server
    issued = await manager.create("alice", roles=("dev",))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        response = await stub.Check(
            check_request(
                raw=[
                    ("cookie", f"SESSION={issued.token}".encode()),
                    ("X-User-Id", b"evil"),
                    ("x-user-x", b"1"),
                ]
            ),
            timeout=2,
        )
    assert response.status.code == code_pb2.OK
    set_headers = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert set_headers["x-user-id"] == "alice"
    # the client's x-user-x, and x-user-email which alice's allow does not set (removed whether sent or not)
    assert list(response.ok_response.headers_to_remove) == ["cookie", "x-user-x", "x-user-email"]


async def test_check_over_grpc_answers_503_not_an_rpc_error_when_the_store_is_down(
    server: tuple[str, SessionManager, MemoryStore],
) -> None:
    address, manager, store = server
    issued = await manager.create("alice")
    store.down = True
    async with grpc.aio.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        response = await stub.Check(check_request(raw=[("cookie", f"SESSION={issued.token}".encode())]), timeout=2)
    assert response.denied_response.status.code == 503


async def test_health_service_answers_on_the_same_port(
    server: tuple[str, SessionManager, MemoryStore],
) -> None:
    address, _, _ = server
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_constant_denials_are_encoded_once_and_redirects_never_cached() -> None:
    deny = Deny(status=401, reason="r", body=b"{}", headers=(("www-authenticate", "Cookie"),))
    assert grpc_v3.to_check_response(deny) is grpc_v3.to_check_response(deny)
    redirect = Deny(status=302, reason="r", body=b"", headers=(("location", "https://login/?rd=x"),))
    assert grpc_v3.to_check_response(redirect) is not grpc_v3.to_check_response(redirect)


def test_an_allows_metadata_is_built_once_per_session_and_each_answer_gets_its_own_copy() -> None:
    allow = Allow(headers_to_set=(), headers_to_remove=(), user_id="alice", session_id="sid-1")
    first = grpc_v3.to_check_response(allow)
    first.dynamic_metadata["user_id"] = "mallory"  # a changed answer leaves the memo as made
    assert grpc_v3.to_check_response(allow).dynamic_metadata["user_id"] == "alice"


def test_the_encoded_answer_is_the_check_response_serialized_and_kept_per_allow() -> None:
    allow = Allow(headers_to_set=(("x-user-id", "alice"), ("cookie", "a=1")), headers_to_remove=("x-user-email",),
                  user_id="alice", session_id="s1")  # fmt: skip
    first = grpc_v3.encoded_response(allow)
    assert first == grpc_v3.to_check_response(allow).SerializeToString()
    equal = Allow(headers_to_set=(("x-user-id", "alice"), ("cookie", "a=1")), headers_to_remove=("x-user-email",),
                  user_id="alice", session_id="s1")  # fmt: skip
    assert grpc_v3.encoded_response(equal) is first  # kept, not built again
    other = Allow(headers_to_set=(("x-user-id", "alice"), ("cookie", "a=2")), headers_to_remove=("x-user-email",),
                  user_id="alice", session_id="s1")  # fmt: skip
    assert grpc_v3.encoded_response(other) == grpc_v3.to_check_response(other).SerializeToString() != first


def test_a_large_allow_is_encoded_each_time_and_the_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    spoofed = tuple(f"x-user-{i:04d}-" + "a" * 40 for i in range(100))  # names a client chose: about 5 KB
    large = Allow(headers_to_set=(("x-user-id", "alice"),), headers_to_remove=spoofed, user_id="alice")
    first = grpc_v3.encoded_response(large)
    assert len(first) > grpc_v3.MAX_MEMOIZED_ALLOW_BYTES
    assert grpc_v3.encoded_response(large) == first and grpc_v3.encoded_response(large) is not first
    monkeypatch.setattr(grpc_v3, "MAX_MEMOIZED_ALLOWS", 3)
    for i in range(10):
        grpc_v3.encoded_response(Allow(headers_to_set=(("x-user-id", f"u{i}"),), headers_to_remove=()))
        assert len(grpc_v3._memoized_allows) <= 3


def test_an_encoded_denial_is_the_check_response_serialized() -> None:
    deny = unavailable()
    assert grpc_v3.encoded_response(deny) == grpc_v3.to_check_response(deny).SerializeToString()
    assert grpc_v3.encoded_response(deny) is grpc_v3.encoded_response(unavailable())


@pytest.fixture
async def threaded_server() -> AsyncIterator[tuple[str, SessionManager, MemoryStore]]:
    """ext_authz on a sync grpc.server (the default model of listen.grpc): store reads finish on this loop."""
    store = MemoryStore()
    keys = KeyRingSource(store, RING)
    service = AuthzService(SETTINGS, store, keys, deadline=0.15)
    listener = ThreadedListener(threads=2)
    grpc_v3.add_to_threaded_server(listener.server, service, asyncio.get_running_loop(), wait_seconds=1.0)
    port = await listener.start("grpc", "127.0.0.1:0")
    manager = SessionManager(store, keys, cookie_name="SESSION", idle_timeout=60, absolute_timeout=600)
    try:
        yield f"127.0.0.1:{port}", manager, store
    finally:
        await listener.stop(0)


async def test_a_threaded_check_that_needs_the_store_is_finished_on_the_event_loop(
    threaded_server: tuple[str, SessionManager, MemoryStore],
) -> None:
    address, manager, store = threaded_server
    issued = await manager.create("alice")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        cookie = [("cookie", f"SESSION={issued.token}".encode())]
        allowed = await stub.Check(check_request(raw=cookie), timeout=2)
        store.down = True
        failed = await stub.Check(check_request(raw=cookie), timeout=2)
        no_cookie = await stub.Check(check_request(), timeout=2)  # answered in the handler thread
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    assert allowed.status.code == code_pb2.OK
    assert {h.header.key: h.header.value for h in allowed.ok_response.headers}["x-user-id"] == "alice"
    assert failed.denied_response.status.code == 503
    assert no_cookie.denied_response.status.code == 401
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_threaded_check_the_event_loop_does_not_finish_in_time_is_a_503_not_an_error() -> None:
    store = MemoryStore()
    keys = KeyRingSource(store, RING)
    service = AuthzService(SETTINGS, store, keys, deadline=0.15)
    manager = SessionManager(store, keys, cookie_name="SESSION", idle_timeout=60, absolute_timeout=600)
    issued = asyncio.run(manager.create("alice"))
    request = check_request(raw=[("cookie", f"SESSION={issued.token}".encode())])
    stalled = asyncio.new_event_loop()  # never run: nothing handed to it is ever finished
    try:
        started = time.monotonic()
        answer = grpc_v3.ThreadedCheck(service, stalled, wait_seconds=0.2)(request, None)
        waited = time.monotonic() - started
        stalled.run_until_complete(asyncio.sleep(0))  # lets the cancelled hand-off close its coroutine
    finally:
        stalled.close()
    assert external_auth_pb2.CheckResponse.FromString(answer).denied_response.status.code == 503
    assert 0.2 <= waited < 2
    closed = grpc_v3.ThreadedCheck(service, stalled, wait_seconds=5)(request, None)  # a closed loop: no wait
    assert external_auth_pb2.CheckResponse.FromString(closed).denied_response.status.code == 503


class SlowStore(MemoryStore):
    """A store whose reads take ``delay`` seconds (a stalled Redis, within the deadline)."""

    delay = 0.6

    async def resolve(self, key: Any, now: float) -> Any:
        await asyncio.sleep(self.delay)
        return await super().resolve(key, now)


async def test_a_check_waiting_on_a_slow_store_does_not_hold_back_one_answered_from_memory() -> None:
    store = SlowStore()
    keys = KeyRingSource(store, RING)
    service = AuthzService(SETTINGS, store, keys, deadline=2.0)
    listener = ThreadedListener(threads=1)  # one running slot: the waiting Check must give it up
    grpc_v3.add_to_threaded_server(
        listener.server, service, asyncio.get_running_loop(), wait_seconds=5.0, released=listener.pool.released
    )
    port = await listener.start("grpc", "127.0.0.1:0")
    manager = SessionManager(store, keys, cookie_name="SESSION", idle_timeout=60, absolute_timeout=600)
    issued = await manager.create("alice")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            cookie = [("cookie", f"SESSION={issued.token}".encode())]
            slow = asyncio.ensure_future(stub.Check(check_request(raw=cookie), timeout=5))
            await asyncio.sleep(0.1)  # the slow one is waiting on the store
            started = time.monotonic()
            fast = await stub.Check(check_request(), timeout=5)  # no cookie: decided in a handler thread
            fast_seconds = time.monotonic() - started
            assert not slow.done()
            allowed = await slow
    finally:
        await listener.stop(0)
    assert fast.denied_response.status.code == 401 and fast_seconds < 0.4
    assert allowed.status.code == code_pb2.OK
