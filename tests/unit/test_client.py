"""The pure translation helpers of the SessionService API: client ↔ protos ↔ servicer, errors, the bearer guard; and
what the clients say when the sidecar does not answer in time (against an in-process gRPC server on loopback)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

import sidecar
from sidecar.api.auth import BearerTokenInterceptor, bearer_credential
from sidecar.api.servicer import duration_seconds, session_message, timestamp
from sidecar.api.v1 import session_pb2, session_pb2_grpc
from sidecar.client import (
    KEEP,
    AsyncSessionClient,
    IssuedSession,
    SessionClient,
    SessionInfo,
    create_request,
    duration_message,
    error_from_status,
    issued_session,
    rotate_request,
    session_info,
    set_cookie_header,
)
from sidecar.core.session import SessionRecord
from sidecar.errors import (
    ApiAuthError,
    BadInput,
    CorruptRecord,
    RuntimeFailure,
    StoreTimeout,
    StoreUnavailable,
)

RECORD = SessionRecord(
    session_id="h4ndle",
    user_id="alice",
    email="alice@example.com",
    roles=("dev", "admin"),
    attributes={"team": "blue"},
    created_at=1_800_000_000.25,
    last_seen_at=1_800_000_100.5,
    idle_timeout=1800.0,
    absolute_expires_at=1_800_043_200.25,
)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_a_record_round_trips_into_session_info() -> None:
    info = session_info(session_message(RECORD))
    assert info == SessionInfo(
        session_id="h4ndle",
        user_id="alice",
        email="alice@example.com",
        roles=("dev", "admin"),
        attributes={"team": "blue"},
        created_at=at(1_800_000_000.25),
        last_seen_at=at(1_800_000_100.5),
        expires_at=at(1_800_000_100.5 + 1800),  # idle expiry comes first
    )
    assert info.created_at.tzinfo is UTC


def test_no_email_stays_absent() -> None:
    message = session_message(SessionRecord("h", "bob", None, ()))
    assert not message.HasField("email")
    assert session_info(message).email is None
    assert session_info(message).roles == ()


def test_timestamps_keep_microseconds() -> None:
    assert timestamp(1.000001).ToMicroseconds() == 1_000_001
    assert timestamp(0.0).ToMicroseconds() == 0


def test_issued_session_hides_its_token() -> None:
    response = session_pb2.CreateResponse(
        token="s1.secret", set_cookie="SESSION=s1.secret", session=session_message(RECORD)
    )
    issued = issued_session(response)
    assert isinstance(issued, IssuedSession) and issued.token == "s1.secret"
    assert "s1.secret" not in repr(issued)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, BadInput),
        (grpc.StatusCode.UNAUTHENTICATED, ApiAuthError),
        (grpc.StatusCode.UNAVAILABLE, StoreUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, StoreTimeout),
        (grpc.StatusCode.DATA_LOSS, CorruptRecord),
        (grpc.StatusCode.UNIMPLEMENTED, RuntimeFailure),
        (grpc.StatusCode.INTERNAL, RuntimeFailure),
        (grpc.StatusCode.NOT_FOUND, RuntimeFailure),
        (None, RuntimeFailure),
    ],
)
def test_status_codes_become_the_sidecar_exception_tree(code: grpc.StatusCode | None, kind: type[Exception]) -> None:
    error = error_from_status(code, "what went wrong")
    assert type(error) is kind
    assert "what went wrong" in str(error)


def test_api_auth_error_is_a_runtime_failure() -> None:
    assert issubclass(ApiAuthError, RuntimeFailure)
    assert sidecar.ApiAuthError is ApiAuthError


def test_bad_input_keeps_the_servers_message() -> None:
    assert str(error_from_status(grpc.StatusCode.INVALID_ARGUMENT, "email contains the control character '\\r'")) == (
        "email contains the control character '\\r'"
    )


def test_create_request_leaves_unset_fields_absent() -> None:
    request = create_request("alice", email=None, roles=(), attributes=None, idle_timeout=None, absolute_timeout=None)
    assert request.user_id == "alice"
    for field in ("email", "idle_timeout", "absolute_timeout"):
        assert not request.HasField(field)


def test_create_request_carries_everything() -> None:
    request = create_request(
        "alice",
        email="a@example.com",
        roles=["dev"],
        attributes={"k": "v"},
        idle_timeout=timedelta(minutes=5),
        absolute_timeout=90.5,
    )
    assert (
        request.email == "a@example.com" and list(request.roles) == ["dev"] and dict(request.attributes) == {"k": "v"}
    )
    assert duration_seconds(request, "idle_timeout") == 300
    assert duration_seconds(request, "absolute_timeout") == 90.5


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 1e30])
def test_durations_that_cannot_travel_are_bad_input(value: float) -> None:
    with pytest.raises(BadInput, match="idle_timeout"):
        duration_message("idle_timeout", value)


def test_non_positive_durations_travel_and_the_sidecar_refuses_them() -> None:
    assert duration_message("x", 0).ToNanoseconds() == 0
    assert duration_message("x", timedelta(seconds=-1)).ToNanoseconds() == -1_000_000_000


def test_rotate_request_keeps_what_is_not_given() -> None:
    request = rotate_request("t", email=KEEP, roles=KEEP, attributes=KEEP)
    assert request.token == "t"
    for field in ("email", "roles", "attributes"):
        assert not request.HasField(field)


def test_rotate_request_clears_and_sets() -> None:
    cleared = rotate_request("t", email=None, roles=(), attributes={})
    assert cleared.HasField("email") and cleared.email == ""
    assert cleared.HasField("roles") and list(cleared.roles.values) == []
    assert cleared.HasField("attributes") and dict(cleared.attributes.values) == {}
    changed = rotate_request("t", email="n@example.com", roles=("a", "b"), attributes={"k": "v"})
    assert changed.email == "n@example.com" and list(changed.roles.values) == ["a", "b"]
    assert dict(changed.attributes.values) == {"k": "v"}


def test_set_cookie_header_is_the_cores() -> None:
    header = set_cookie_header("__Host-session", "tok", 3600.9)
    assert header == "__Host-session=tok; Max-Age=3600; Path=/; Secure; HttpOnly; SameSite=Lax"
    assert "__Host-" in (set_cookie_header.__doc__ or "")


# --- the bearer guard --------------------------------------------------------------------------------------

TOKEN = "t" * 32


@pytest.mark.parametrize(
    ("metadata", "credential"),
    [
        ((("authorization", f"Bearer {TOKEN}"),), TOKEN),
        ((("authorization", f"bearer {TOKEN}"),), TOKEN),
        ((("x-other", "1"), ("authorization", f"Bearer {TOKEN}")), TOKEN),
        (None, None),
        ((), None),
        ((("authorization", TOKEN),), None),
        ((("authorization", f"Basic {TOKEN}"),), None),
        ((("authorization", "Bearer "),), None),
        ((("authorization", "Bearer x"), ("authorization", "Bearer y")), None),
        ((("authorization", b"Bearer x"),), None),
    ],
)
def test_bearer_credential(metadata: tuple[tuple[str, str | bytes], ...] | None, credential: str | None) -> None:
    assert bearer_credential(metadata) == credential


def test_the_interceptor_allows_only_the_exact_token() -> None:
    guard = BearerTokenInterceptor(TOKEN)
    assert guard.allows((("authorization", f"Bearer {TOKEN}"),))
    assert not guard.allows((("authorization", f"Bearer {TOKEN}x"),))
    assert not guard.allows((("authorization", f"Bearer {TOKEN[:-1]}"),))
    assert not guard.allows((("authorization", "Bearer é"),))
    assert not guard.allows(None)
    with pytest.raises(ValueError):
        BearerTokenInterceptor("")


class StalledSessions(session_pb2_grpc.SessionServiceServicer):
    """A SessionService that answers nothing before the caller's deadline."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def _stall(self, context: grpc.ServicerContext) -> None:
        self.release.wait(5)
        context.abort(grpc.StatusCode.UNAVAILABLE, "released")

    def Create(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._stall(context)

    def RevokeUser(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._stall(context)

    def Get(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._stall(context)


@pytest.fixture
def stalled_target() -> Iterator[str]:
    servicer = StalledSessions()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    session_pb2_grpc.add_SessionServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        servicer.release.set()
        server.stop(None)


def test_a_write_that_timed_out_says_its_outcome_is_unknown(stalled_target: str) -> None:
    with SessionClient(stalled_target, "api-token", timeout=0.2) as sessions:
        with pytest.raises(StoreTimeout, match=r"did not answer Create in time.*outcome unknown"):
            sessions.create("alice")
        with pytest.raises(StoreTimeout, match=r"did not answer RevokeUser in time.*outcome unknown"):
            sessions.revoke_user("alice")
        with pytest.raises(StoreTimeout, match="did not answer in time") as read:
            sessions.get("s1.token")
    assert "outcome" not in str(read.value)


async def test_the_async_client_says_so_too(stalled_target: str) -> None:
    async with AsyncSessionClient(stalled_target, "api-token", timeout=0.2) as sessions:
        with pytest.raises(StoreTimeout, match=r"did not answer Create in time.*outcome unknown"):
            await sessions.create("alice")


# What a login service's process may load when it imports the client: the core, the exception tree and the
# generated API code. A server module (store, authz, app, lifecycle, config, ...) would drag in redis, pydantic,
# prometheus and the server's start-up costs, and tie the client's release to the server's internals.
CLIENT_MAY_LOAD = ("sidecar", "sidecar.client", "sidecar.errors", "sidecar.core", "sidecar.api", "sidecar.api.v1")


def test_importing_the_client_loads_no_server_module() -> None:
    script = (
        "import json, sys; import sidecar.client; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'sidecar' or m.startswith('sidecar.'))))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(result.stdout)
    assert "sidecar.client" in loaded
    server = [
        name
        for name in loaded
        if name not in CLIENT_MAY_LOAD and not name.startswith(("sidecar.core.", "sidecar.api.v1."))
    ]
    assert server == []
