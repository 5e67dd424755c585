"""The SessionService servicer and its bearer guard, in process on the in-memory store: error mapping and routing."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from sidecar.api import auth as auth_module
from sidecar.api import servicer as session_api
from sidecar.api.auth import BearerTokenInterceptor
from sidecar.api.v1 import session_pb2, session_pb2_grpc
from sidecar.core.tokens import KeyRing
from sidecar.errors import CorruptRecord, StoreTimeout
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.store.memory import MemoryStore

TOKEN = "unit-test-api-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


class Allow(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Any) -> Any:
        return external_auth_pb2.CheckResponse()


class Exploding:
    """A manager whose every call fails in a given way."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise self.error

        return fail


async def start(manager: Any) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[BearerTokenInterceptor(TOKEN)])
    session_api.add_to_server(server, manager)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(Allow(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def target(store: MemoryStore) -> AsyncIterator[str]:
    ring = KeyRing.of([("k1", b"k" * 32)])
    manager = SessionManager(
        store, KeyRingSource(store, ring), cookie_name="SESSION", idle_timeout=60, absolute_timeout=3600
    )
    server, address = await start(manager)
    try:
        yield address
    finally:
        await server.stop(None)


async def status(target: str, method: str, request: Any, metadata: Any = AUTH) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        try:
            await getattr(stub, method)(request, timeout=5, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_guarded_service_and_unguarded_check(target: str) -> None:
    assert (await status(target, "ListUser", session_pb2.ListUserRequest(user_id="a"), None))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert (await status(target, "ListUser", session_pb2.ListUserRequest(user_id="a")))[0] == grpc.StatusCode.OK
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await external_auth_pb2_grpc.AuthorizationStub(channel).Check(external_auth_pb2.CheckRequest())
        assert reply is not None


async def test_store_down_is_unavailable(target: str, store: MemoryStore) -> None:
    store.down = True
    code, details = await status(target, "Create", session_pb2.CreateRequest(user_id="alice"))
    assert code == grpc.StatusCode.UNAVAILABLE and "memory store marked down" in details


async def test_not_found_for_a_well_formed_unknown_token(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        created = await stub.Create(session_pb2.CreateRequest(user_id="alice"), metadata=AUTH)
        await stub.Revoke(session_pb2.RevokeRequest(token=created.token), metadata=AUTH)
    assert (await status(target, "Get", session_pb2.GetRequest(token=created.token)))[0] == grpc.StatusCode.NOT_FOUND
    rotate = session_pb2.RotateRequest(token=created.token, roles=session_pb2.Roles(values=["x"]))
    assert (await status(target, "Rotate", rotate))[0] == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (StoreTimeout("store too slow"), grpc.StatusCode.UNAVAILABLE, "store too slow"),
        (CorruptRecord("bad json"), grpc.StatusCode.DATA_LOSS, "corrupt"),
        (RuntimeError("secret internals"), grpc.StatusCode.INTERNAL, "internal error"),
    ],
)
async def test_error_mapping(error: Exception, code: grpc.StatusCode, details: str, caplog: Any) -> None:
    server, address = await start(Exploding(error))
    try:
        got, message = await status(address, "Get", session_pb2.GetRequest(token="t"))
    finally:
        await server.stop(None)
    assert got == code
    assert details in message
    assert "secret internals" not in message
    if isinstance(error, RuntimeError):
        assert "secret internals" in caplog.text  # logged for the operator, not sent to the caller


# --- the bearer token is compared in constant time ---------------------------------------------------------

_REAL_COMPARE = hmac.compare_digest


class RecordingCompare:
    """Stands in for hmac.compare_digest: records its arguments and answers as told, or as the real one does."""

    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.calls: list[tuple[object, object]] = []

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((a, b))
        return _REAL_COMPARE(a, b) if self.answer is None else self.answer


def spy_compare(monkeypatch: pytest.MonkeyPatch, answer: bool | None = None) -> RecordingCompare:
    compare = RecordingCompare(answer)
    if hasattr(auth_module, "compare_digest"):  # `from hmac import compare_digest`
        monkeypatch.setattr(auth_module, "compare_digest", compare)
    else:
        monkeypatch.setattr(auth_module.hmac, "compare_digest", compare)
    return compare


def test_bearer_token_is_compared_with_hmac_compare_digest_even_when_none_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `==` stops at the first differing byte: its timing would let a caller guess the API token byte by byte. And a
    # request without a token must cost the same compare, or timing tells apart "no token" from "wrong token".
    compare = spy_compare(monkeypatch)
    guard = BearerTokenInterceptor(TOKEN)
    wrong = "x" * len(TOKEN)
    assert guard.allows(AUTH)
    assert not guard.allows((("authorization", f"Bearer {wrong}"),))
    assert not guard.allows(None)
    expected = TOKEN.encode()
    assert [set(call) for call in compare.calls] == [{expected}, {wrong.encode(), expected}, {b"", expected}]


@pytest.mark.parametrize("answer", [True, False])
def test_bearer_guard_answers_what_the_constant_time_compare_says(
    monkeypatch: pytest.MonkeyPatch, answer: bool
) -> None:
    # A compare_digest call whose answer is then overruled by an `==` elsewhere would pass the test above.
    spy_compare(monkeypatch, answer)
    guard = BearerTokenInterceptor(TOKEN)
    presented = "y" * len(TOKEN) if answer else TOKEN
    assert guard.allows((("authorization", f"Bearer {presented}"),)) is answer
    assert not guard.allows(None)  # no credential is never enough, whatever the compare says


# --- requests that do not deserialize ------------------------------------------------------------------------


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2), written by hand so it can carry bytes that are not UTF-8."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


NOT_UTF8 = b"bob\xff\xfe"

UNDECODABLE: list[tuple[str, bytes]] = [
    ("Create", field(1, NOT_UTF8)),
    ("Create", field(4, field(1, b"team") + field(2, NOT_UTF8))),  # an attribute value
    ("Get", field(1, NOT_UTF8)),
    ("Rotate", field(1, b"t") + field(3, field(1, NOT_UTF8))),  # a role in the nested Roles message
    ("Revoke", field(1, NOT_UTF8)),
    ("RevokeSession", field(1, b"bob") + field(2, NOT_UTF8)),
    ("RevokeUser", field(1, NOT_UTF8)),
    ("ListUser", field(1, NOT_UTF8)),
    ("ListUser", b"\x0a\x7f"),  # truncated: the length says 127 bytes follow
]


@pytest.mark.parametrize(("method", "raw"), UNDECODABLE, ids=[f"{m}-{i}" for i, (m, _) in enumerate(UNDECODABLE)])
async def test_a_request_that_does_not_decode_is_invalid_argument_without_a_traceback(
    target: str, method: str, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{session_api.SERVICE_NAME}/{method}",
            request_serializer=lambda raw: raw,  # the bytes go out as they are
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(raw, timeout=5, metadata=AUTH)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid" in (excinfo.value.details() or "")
    assert "Traceback" not in caplog.text and "Exception" not in caplog.text


async def test_an_undecodable_request_without_the_bearer_token_is_still_unauthenticated(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{session_api.SERVICE_NAME}/Get",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await call(field(1, NOT_UTF8), timeout=5)
    assert excinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED
