"""Hostile requests through a real Envoy, in both modes (ext_authz over gRPC and over HTTP), issue #7.

Non-UTF-8 bytes, obs-text, a 60 KiB Cookie header, 200 Cookie lines, 50 forged session cookies ahead of the valid
one, identity spoofs in odd casing and repeated: never a 5xx (CONTRACT.md allows one only when the store is down,
and it is up here), never an allow without a live session, and the sidecar still alive and answering afterwards.

Requests are written with ``http.client`` so header values go out as the exact bytes given (httpx would refuse
or re-encode some of them). One gRPC-mode stack (Valkey + sidecar + echo + Envoy) serves the module, and an
HTTP-mode sidecar + Envoy shares its Valkey (so its key ring and sessions) and its echo upstream.
"""

from __future__ import annotations

import http.client
import json
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import servers

pytestmark = pytest.mark.e2e

IDENTITY_PREFIXES = ("x-user-", "x-session-")
B64URL = string.ascii_letters + string.digits + "-_"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def describe(self) -> str:
        return f"{self.status} {self.headers} {self.body[:300]!r}"

    def upstream(self) -> dict[str, list[str]]:
        """The headers the echo upstream received (asserts the request reached it)."""
        assert self.status == 200, f"expected the upstream's 200, got {self.describe()}"
        received: dict[str, list[str]] = json.loads(self.body)["headers"]
        return received

    def identity(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.upstream().items() if k.startswith(IDENTITY_PREFIXES)}


def send(stack: servers.Stack, path: str, headers: Sequence[tuple[str, str | bytes]]) -> Reply:
    """GET through Envoy with the header lines exactly as given (bytes values go out byte for byte)."""
    conn = http.client.HTTPConnection(servers.LOOPBACK, stack.envoy_port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return Reply(response.status, response.getheaders(), response.read())
    finally:
        conn.close()


def assert_denied(reply: Reply, *statuses: int) -> None:
    """Not an allow, and not a 5xx: one of ``statuses`` (401 unless told), answered by Envoy or the sidecar."""
    assert reply.status in (statuses or (401,)), reply.describe()
    assert b'"headers"' not in reply.body, f"the upstream answered: {reply.describe()}"


def sidecar_of(stack: servers.Stack) -> servers.Server:
    return next(server for server in stack.servers if server.name == "sidecar")


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def http_stack(stack: servers.Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Stack]:
    workdir: Path = tmp_path_factory.mktemp("hardening-http")
    second = servers.start_stack(workdir, share=stack, mode="http", name="http")
    try:
        yield second
    finally:
        second.close()


@pytest.fixture(scope="module", params=["grpc", "http"])
def edge(request: pytest.FixtureRequest, stack: servers.Stack) -> servers.Stack:
    if request.param == "http":
        http_edge: servers.Stack = request.getfixturevalue("http_stack")
        return http_edge
    return stack


@pytest.fixture(scope="module")
def alice(stack: servers.Stack) -> dict[str, Any]:
    return stack.create_session("alice", email="alice@example.com", roles=("admin", "dev"))


@pytest.fixture(scope="module")
def revoked(stack: servers.Stack) -> list[str]:
    """Three tokens with a valid MAC whose sessions are gone: each one is looked up, and counts towards the 3."""
    tokens = [stack.create_session("gone")["token"] for _ in range(3)]
    assert stack.revoke_user("gone") == {"revoked": 3}
    return tokens


@pytest.fixture(autouse=True)
def _sidecar_still_answers(request: pytest.FixtureRequest) -> Iterator[None]:
    # After every test: the sidecar that was fed the hostile input is alive and still allows a plain request.
    yield
    if "edge" in request.fixturenames:
        edge: servers.Stack = request.getfixturevalue("edge")
        alice: dict[str, Any] = request.getfixturevalue("alice")
        assert sidecar_of(edge).running, edge.logs()
        reply = send(edge, "/after", [("Cookie", f"SESSION={alice['token']}")])
        assert reply.identity().get("x-user-id") == ["alice"], reply.describe()


# --------------------------------------------------------------------------------------------------- bytes


def test_non_utf8_cookie_bytes_around_a_live_session_are_allowed_without_the_session_cookie(
    edge: servers.Stack, alice: dict[str, Any]
) -> None:
    cookie = b"a=\xff\xfe; SESSION=" + alice["token"].encode() + b"; b=caf\xe9"
    reply = send(edge, "/hello", [("Cookie", cookie)])
    assert reply.identity()["x-user-id"] == ["alice"]
    assert "SESSION" not in " ".join(reply.upstream().get("cookie", []))


def test_non_utf8_bytes_of_the_other_cookies_reach_the_upstream_byte_exact_in_http_mode(
    http_stack: servers.Stack, alice: dict[str, Any]
) -> None:
    cookie = b"a=\xff\xfe; SESSION=" + alice["token"].encode() + b"; c=ok; b=caf\xe9"
    reply = send(http_stack, "/hello", [("Cookie", cookie)])
    assert reply.identity()["x-user-id"] == ["alice"]
    # The echo upstream reads header bytes as latin-1: the same bytes came through, none replaced or dropped.
    assert reply.upstream()["cookie"] == ["a=\xff\xfe; c=ok; b=caf\xe9"]


def test_in_grpc_mode_only_the_non_utf8_cookies_are_dropped_and_the_others_reach_the_upstream(
    stack: servers.Stack, alice: dict[str, Any]
) -> None:
    # Envoy 1.40 ignores raw_value in ok_response headers: a rewritten Cookie holding non-UTF-8 bytes would arrive
    # empty, so the gRPC adapter keeps the UTF-8 pieces (RFC 6265 cookie-octets are ASCII anyway).
    cookie = b"a=\xff\xfe; SESSION=" + alice["token"].encode() + b"; c=ok; b=caf\xe9; d=\xc3\xa9t\xc3\xa9"
    reply = send(stack, "/hello", [("Cookie", cookie)])
    assert reply.identity()["x-user-id"] == ["alice"]
    assert reply.upstream()["cookie"] == ["c=ok; d=\xc3\xa9t\xc3\xa9"]  # UTF-8 "été", seen as latin-1 bytes
    only_bad = b"a=\xff; SESSION=" + alice["token"].encode()
    reply = send(stack, "/hello", [("Cookie", only_bad)])
    assert reply.identity()["x-user-id"] == ["alice"] and "cookie" not in reply.upstream()


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe", b"{token}\xff", b"\xc3{token}", b"{token}\xe2\x80\x8b"],
    ids=["only-bytes", "trailing-byte", "leading-byte", "zero-width-space"],
)
def test_non_utf8_bytes_in_the_session_cookie_are_denied(
    edge: servers.Stack, alice: dict[str, Any], value: bytes
) -> None:
    cookie = b"SESSION=" + value.replace(b"{token}", alice["token"].encode())
    assert_denied(send(edge, "/hello", [("Cookie", cookie), ("x-user-id", "alice")]))


def test_obs_text_header_values_are_carried_and_never_spoof_an_identity(
    edge: servers.Stack, alice: dict[str, Any]
) -> None:
    hostile = [("X-Note", b"caf\xe9 \x80\xff"), ("X-User-Id", b"\xffroot"), ("X-User-Email", b"m\xe9@example.com")]
    reply = send(edge, "/hello", [*hostile, ("Cookie", f"SESSION={alice['token']}")])
    assert reply.upstream()["x-note"] == ["caf\xe9 \x80\xff"]
    assert reply.identity()["x-user-id"] == ["alice"]
    assert reply.identity()["x-user-email"] == ["alice@example.com"]
    assert_denied(send(edge, "/hello", hostile))
    assert send(edge, "/public/page", hostile).identity() == {}


# --------------------------------------------------------------------------------------------------- size


def junk_cookies(size: int) -> str:
    pairs = []
    total = 0
    while total < size:
        pairs.append(f"c{len(pairs)}={'v' * 40}")
        total += len(pairs[-1]) + 2
    return "; ".join(pairs)


def test_a_60_kib_cookie_header_is_refused_by_envoy_or_decided_never_a_5xx(
    edge: servers.Stack, alice: dict[str, Any]
) -> None:
    # Envoy's default header limit is 60 KiB, so it may answer 431 itself; what it lets through gets a decision.
    junk = junk_cookies(60 * 1024)
    with_session = send(edge, "/hello", [("Cookie", f"{junk}; SESSION={alice['token']}")])
    if with_session.status == 200:
        assert with_session.identity()["x-user-id"] == ["alice"]
    else:
        assert_denied(with_session, 431)
    assert_denied(send(edge, "/hello", [("Cookie", f"{junk}; SESSION={'A' * 100}")]), 401, 431)
    # Just under Envoy's limit the whole header reaches the sidecar, and the session at its very end still counts.
    large = send(edge, "/hello", [("Cookie", f"{junk_cookies(48 * 1024)}; SESSION={alice['token']}")])
    assert large.identity()["x-user-id"] == ["alice"]
    assert not any("SESSION=" in line for line in large.upstream()["cookie"])


def test_200_cookie_lines_are_refused_by_envoy_or_decided_never_a_5xx(
    edge: servers.Stack, alice: dict[str, Any]
) -> None:
    # Envoy's default limit is 100 header lines: 200 get its 431; 80 reach the sidecar, ours in the last one.
    many = [("Cookie", f"c{i}=v{i}") for i in range(199)]
    reply = send(edge, "/hello", [*many, ("Cookie", f"SESSION={alice['token']}")])
    if reply.status == 200:
        assert reply.identity()["x-user-id"] == ["alice"]
    else:
        assert_denied(reply, 431)
    assert_denied(send(edge, "/hello", many), 401, 431)
    reply = send(edge, "/hello", [*many[:80], ("Cookie", f"SESSION={alice['token']}")])
    assert reply.identity()["x-user-id"] == ["alice"]
    assert reply.upstream()["cookie"] == ["; ".join(f"c{i}=v{i}" for i in range(80))]


def test_a_request_just_under_envoys_header_count_limit_with_a_live_session_is_not_a_5xx(
    edge: servers.Stack, alice: dict[str, Any]
) -> None:
    many = [("Cookie", f"c{i}=v{i}") for i in range(90)]
    assert send(edge, "/public/page", many).status == 200  # Envoy itself accepts this many lines
    reply = send(edge, "/hello", [*many, ("Cookie", f"SESSION={alice['token']}")])
    assert reply.status < 500, reply.describe()
    assert reply.identity()["x-user-id"] == ["alice"]


# --------------------------------------------------------------------------------------------------- repetition


def test_fifty_forged_session_cookies_ahead_of_the_valid_one_do_not_use_up_the_three_tries(
    edge: servers.Stack, alice: dict[str, Any], revoked: list[str]
) -> None:
    token = alice["token"]
    head, _, mac = token.rpartition(".")
    forged = [f"{head}.{a}{b}{mac[2:]}" for a in B64URL for b in "AB" if a + b != mac[:2]][:50]
    cookie = "; ".join(f"SESSION={t}" for t in [*forged, token])
    assert send(edge, "/hello", [("Cookie", cookie)]).identity()["x-user-id"] == ["alice"]
    # Three verified but dead tokens ahead of it do use them up (CONTRACT.md: at most 3 are tried).
    cookie = "; ".join(f"SESSION={t}" for t in [*forged[:10], *revoked, token])
    assert_denied(send(edge, "/hello", [("Cookie", cookie)]))


SPOOFS: list[tuple[str, str]] = [
    ("X-uSeR-iD", "admin"),
    ("x-user-id", "root"),
    ("X-USER-ID", "root"),
    ("x-user-id", "alice"),
    ("x-USER-roles", "admin,superuser"),
    ("X-User-Email", "evil@example.com"),
    ("x-SESSION-id", "forged"),
    ("X-Session-Id", "forged-2"),
]


def test_identity_spoofs_in_odd_casing_and_repeated_never_reach_the_upstream(
    edge: servers.Stack, alice: dict[str, Any]
) -> None:
    allowed = send(edge, "/hello", [*SPOOFS, ("Cookie", f"SESSION={alice['token']}")])
    assert allowed.identity() == {
        "x-user-id": ["alice"],
        "x-user-email": ["alice@example.com"],
        "x-user-roles": ["admin,dev"],
        "x-session-id": [alice["session_id"]],
    }
    assert send(edge, "/public/page", SPOOFS).identity() == {}
    assert_denied(send(edge, "/hello", SPOOFS))
    assert_denied(send(edge, "/admin/panel", [*SPOOFS, ("Cookie", "SESSION=admin")]))
