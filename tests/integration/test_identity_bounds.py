"""Identities are bounded and header-safe at write time (issue #16): through the SessionService API on a real Valkey,
and through the command line as a user runs it. Nothing refused reaches the store; each refusal is one short line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.api import servicer as session_api
from sidecar.api.auth import BearerTokenInterceptor
from sidecar.api.v1 import session_pb2, session_pb2_grpc
from sidecar.core.session import MAX_ATTRIBUTE_NAME_LENGTH, MAX_ATTRIBUTES, MAX_RECORD_BYTES, to_json
from sidecar.core.tokens import KeyRing, session_key
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.store.redis import RedisStore

pytestmark = pytest.mark.integration

API_TOKEN = "identity-bounds-api-token-0123456789"
AUTH = (("authorization", f"Bearer {API_TOKEN}"),)
MAX_MESSAGE = 8 * 1024 * 1024  # above a megabytes-long name, so the servicer (not gRPC's 4 MB limit) refuses it


@pytest.fixture
async def api(valkey_url: str, tmp_path: Path) -> AsyncIterator[tuple[session_pb2_grpc.SessionServiceStub, RedisStore]]:
    store = RedisStore.from_url(valkey_url, prefix_of(tmp_path), 2.0)
    manager = SessionManager(
        store,
        KeyRingSource(store, KeyRing.of([("k1", b"k" * 32)])),
        cookie_name="SESSION",
        idle_timeout=600,
        absolute_timeout=3600,
    )
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    server = grpc.aio.server(interceptors=[BearerTokenInterceptor(API_TOKEN)], options=options)
    session_api.add_to_server(server, manager)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            yield session_pb2_grpc.SessionServiceStub(channel), store
    finally:
        await server.stop(None)
        await store.close()


def prefix_of(tmp_path: Path) -> str:
    return f"bounds-{tmp_path.name[-12:]}:"


async def refused(call: Any, request: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await call(request, timeout=10, metadata=AUTH)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT, excinfo.value.details()
    details = excinfo.value.details() or ""
    assert len(details) < 400 and "\n" not in details
    return details


CREATE_REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("c1_and_line_separator_in_user", {"user_id": "bob\u0085x\u2028y"}, "user id contains the control character"),
    ("csi_in_email", {"user_id": "eve", "email": "e\u009b31m@x"}, "email contains the control character"),
    ("paragraph_separator_in_user", {"user_id": "bob\u2029"}, "user id contains U+2029"),
    ("bidi_override_in_role", {"user_id": "eve", "roles": ["\u202enimda"]}, "contains U+202E"),
    (
        "megabytes_attribute_name",
        {"user_id": "eve", "attributes": {"n" * 3_900_000: "v"}},
        f"is longer than {MAX_ATTRIBUTE_NAME_LENGTH} characters",
    ),
    (
        "too_many_attributes",
        {"user_id": "eve", "attributes": {f"k{i}": "v" for i in range(200_000)}},
        f"more than {MAX_ATTRIBUTES} attributes",
    ),
    (
        "identity_over_the_record_bound",
        {"user_id": "eve", "roles": [f"r{i:02d}-" + "x" * 1100 for i in range(64)]},
        "the identity takes",
    ),
]


@pytest.mark.parametrize(("fields", "needle"), [c[1:] for c in CREATE_REFUSALS], ids=[c[0] for c in CREATE_REFUSALS])
async def test_the_api_refuses_an_unsafe_or_oversized_identity_and_stores_nothing(
    api: tuple[session_pb2_grpc.SessionServiceStub, RedisStore], fields: dict[str, Any], needle: str
) -> None:
    stub, store = api
    details = await refused(stub.Create, session_pb2.CreateRequest(**fields))
    assert needle in details
    assert await store.list_user(fields["user_id"]) == []


async def test_the_api_refuses_a_rotation_to_an_unsafe_identity_and_the_old_token_keeps_working(
    api: tuple[session_pb2_grpc.SessionServiceStub, RedisStore],
) -> None:
    stub, _store = api
    created = await stub.Create(session_pb2.CreateRequest(user_id="carol"), metadata=AUTH)
    for change in (
        {"email": "c\u0085@example.com"},
        {"attributes": session_pb2.Attributes(values={"x" * 65: "v"})},
        {"roles": session_pb2.Roles(values=["ops\u2028x-user-roles: admin"])},
    ):
        await refused(stub.Rotate, session_pb2.RotateRequest(token=created.token, **change))
    kept = await stub.Get(session_pb2.GetRequest(token=created.token), metadata=AUTH)
    assert kept.session.user_id == "carol" and not kept.session.email


async def test_the_largest_identity_the_api_accepts_is_stored_and_read_back(
    api: tuple[session_pb2_grpc.SessionServiceStub, RedisStore],
) -> None:
    stub, store = api
    attributes = {f"{i:02d}" + "n" * (MAX_ATTRIBUTE_NAME_LENGTH - 2): "\U0001f600" * 440 for i in range(MAX_ATTRIBUTES)}
    created = await stub.Create(session_pb2.CreateRequest(user_id="dave", attributes=attributes), metadata=AUTH)
    got = await stub.Get(session_pb2.GetRequest(token=created.token), metadata=AUTH)
    assert dict(got.session.attributes) == attributes
    (listed,) = await store.list_user("dave")  # read back through the bounds the request path applies
    assert MAX_RECORD_BYTES * 0.8 < len(to_json(listed)) <= MAX_RECORD_BYTES


async def test_sessions_planted_with_megabytes_are_skipped_by_list_user_and_data_loss_for_get(
    api: tuple[session_pb2_grpc.SessionServiceStub, RedisStore], tmp_path: Path
) -> None:
    # Issue #16: 25 sessions with a 3.9 MB attribute name made ListUser fail. Whoever writes to the store can still
    # plant them (here 25 of 400 KB, 10 MB together: over the channel's message limit); reads refuse them unread.
    stub, store = api
    healthy = await stub.Create(session_pb2.CreateRequest(user_id="frank"), metadata=AUTH)
    tokens = [(await stub.Create(session_pb2.CreateRequest(user_id="frank"), metadata=AUTH)).token for _ in range(25)]
    for token in tokens:
        key = session_key(token)
        name = f"{prefix_of(tmp_path)}{{{key.tag}}}:s:{key.digest}"
        record = json.loads((await store.client.hget(name, "d"))[3:])
        record["attrs"] = {"n" * 400_000: "v"}
        await store.client.hset(name, "d", b"p1." + json.dumps(record).encode())
    started = time.perf_counter()
    listed = await stub.ListUser(session_pb2.ListUserRequest(user_id="frank"), metadata=AUTH)
    print(f"ListUser with 25 planted records of 400 KB: {(time.perf_counter() - started) * 1000:.1f} ms")
    assert [s.session_id for s in listed.sessions] == [healthy.session.session_id]
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.Get(session_pb2.GetRequest(token=tokens[0]), metadata=AUTH)
    assert excinfo.value.code() == grpc.StatusCode.DATA_LOSS


# --- the command line --------------------------------------------------------------------------------------


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "sidecar", *args, "--config", str(config)]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.fixture
def config(tmp_path: Path, valkey_url: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(f"redis:\n  url: {valkey_url}\n  key_prefix: 'bounds-cli-{tmp_path.name[-12:]}:'\n")
    return path


CLI_REFUSALS: list[tuple[str, list[str], str]] = [
    ("c1_in_user", ["--user", "bob\u0085x\u2028y"], "user id contains the control character"),
    ("csi_in_email", ["--user", "eve", "--email", "e\u009b31m@x"], "email contains the control character"),
    ("long_attribute_name", ["--user", "eve", "--attr", "n" * 100_000 + "=v"], "is longer than 64 characters"),
    ("bidi_in_role", ["--user", "eve", "--roles", "dev,\u202eadmin"], "contains U+202E"),
]


@pytest.mark.parametrize(("args", "needle"), [c[1:] for c in CLI_REFUSALS], ids=[c[0] for c in CLI_REFUSALS])
def test_the_cli_refuses_an_unsafe_or_oversized_identity_in_one_short_line(
    config: Path, args: list[str], needle: str
) -> None:
    result = cli(config, "session", "create", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert needle in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 400, result.stderr[:500]
    listed = cli(config, "session", "list", args[1])
    assert listed.returncode == 0 and listed.stdout.strip() in ("", "[]"), listed.stdout
