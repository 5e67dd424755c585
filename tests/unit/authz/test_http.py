"""HTTP ext_authz and forward-auth (``sidecar.authz.http``): a real listener on a loopback port over the in-memory
store; requests are raw bytes on a socket, so malformed and hostile ones can be sent exactly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets

import pytest

from sidecar import app
from sidecar.authz import http
from sidecar.authz.service import AuthzService
from sidecar.core.tokens import ENTROPY_BYTES, mint_token
from sidecar.errors import RuntimeFailure
from sidecar.keyring import KeyRingSource
from sidecar.store.memory import MemoryStore
from tests.support.edge import RING, SETTINGS
from tests.support.http_wire import Problems, Served, closed, read_response, request, serving


async def test_live_session_is_allowed_with_identity_cookie_rewrite_and_removals(served: Served) -> None:
    issued = await served.manager.create("alice", email="a@example.com", roles=("admin", "dev"))
    response = await served.ask(
        "/hello",
        ("Cookie", f"a=1; SESSION={issued.token}; b=2"),
        ("X-User-Id", "admin"),
        ("x-user-id", "root"),
        ("X-Session-Other", "x"),
    )
    assert response.status == 200 and response.body == b""
    assert response.header("x-user-id") == "alice"
    assert response.header("x-user-roles") == "admin,dev"
    assert response.header("x-session-id") == issued.record.session_id
    assert response.header("cookie") == "a=1; b=2"
    assert response.header(http.HEADERS_TO_REMOVE) == "x-session-other"  # the others are set, not removed


async def test_only_the_session_cookie_means_cookie_is_removed(served: Served) -> None:
    issued = await served.manager.create("alice")
    response = await served.ask("/hello", ("Cookie", f"SESSION={issued.token}"))
    assert response.status == 200
    assert response.header("cookie") is None
    assert response.header(http.HEADERS_TO_REMOVE) == "cookie,x-user-email,x-user-roles"  # not set: never sent


async def test_session_cookie_in_its_own_header_line(served: Served) -> None:
    issued = await served.manager.create("alice")
    response = await served.ask("/c", ("Cookie", "a=1"), ("Cookie", f"SESSION={issued.token}"), ("Cookie", "b=2"))
    assert response.header("x-user-id") == "alice"
    assert response.header("cookie") == "a=1; b=2"


async def test_denials_carry_status_body_and_headers(served: Served) -> None:
    unauthenticated = await served.ask("/hello")
    assert unauthenticated.status == 401
    assert unauthenticated.header("www-authenticate")
    assert b'"unauthenticated"' in unauthenticated.body
    bob = await served.manager.create("bob", roles=("dev",))
    forbidden = await served.ask("/admin/x", ("cookie", f"SESSION={bob.token}"))
    assert forbidden.status == 403 and b'"forbidden"' in forbidden.body
    served.store.down = True
    down = await served.ask("/hello", ("cookie", f"SESSION={bob.token}"))
    assert (down.status, down.header("retry-after")) == (503, "1")
    public = await served.ask("/public/x", ("cookie", f"SESSION={bob.token}"), ("x-user-id", "evil"))
    removed = "cookie,x-user-id,x-user-email,x-user-roles,x-session-id"
    assert public.status == 200 and public.header(http.HEADERS_TO_REMOVE) == removed


async def test_public_route_with_spoofed_headers_is_anonymous(served: Served) -> None:
    response = await served.ask("/public/x", ("X-User-Id", "admin"), ("x-session-id", "s"))
    assert response.status == 200
    assert response.header("x-user-id") is None
    assert response.header(http.HEADERS_TO_REMOVE) == "x-user-id,x-session-id,x-user-email,x-user-roles"


async def test_forward_auth_decides_for_the_forwarded_request(served: Served) -> None:
    public = await served.ask("/forward-auth", ("X-Forwarded-Uri", "/public/page"), ("X-Forwarded-Method", "GET"))
    assert public.status == 200
    nginx = await served.ask("/forward-auth", ("X-Original-URI", "/public/page"))
    assert nginx.status == 200
    bob = await served.manager.create("bob", roles=("dev",))
    admin = await served.ask("/forward-auth", ("X-Forwarded-Uri", "/admin/x"), ("cookie", f"SESSION={bob.token}"))
    assert admin.status == 403


async def test_forward_auth_answers_carry_the_cookie_the_upstream_should_get(served: Served) -> None:
    issued = await served.manager.create("alice")
    public = ("X-Forwarded-Uri", "/public/x")
    untouched = await served.ask("/forward-auth", public, ("cookie", "a=1"), ("cookie", "b=2"))
    assert untouched.header("cookie") == "a=1; b=2"
    rewritten = await served.ask("/forward-auth", public, ("cookie", f"a=1; SESSION={issued.token}"))
    identity = "x-user-email,x-user-roles"  # alice's allow sets x-user-id and x-session-id
    assert (rewritten.header("cookie"), rewritten.header(http.HEADERS_TO_REMOVE)) == ("a=1", identity)
    removed = await served.ask("/forward-auth", public, ("cookie", f"SESSION={issued.token}"))
    assert (removed.header("cookie"), removed.header(http.HEADERS_TO_REMOVE)) == (None, "cookie," + identity)
    envoy = await served.ask("/public/x", ("cookie", "a=1"))
    assert envoy.header("cookie") is None, "Envoy keeps a Cookie header the answer does not name"


@pytest.mark.parametrize("target", ["/hello", "/forward-auth/x", "/forward-authz"])
async def test_forwarded_uri_cannot_borrow_a_public_route_off_forward_auth(served: Served, target: str) -> None:
    response = await served.ask(target, ("X-Forwarded-Uri", "/public/page"), ("X-Original-URI", "/public/page"))
    assert response.status == 401


async def test_login_redirect_uses_the_forwarded_scheme_and_host(problems: Problems) -> None:
    async with serving(problems, dataclasses.replace(SETTINGS, login_url="/login")) as served:
        envoy = await served.ask("/a?b=1", ("x-forwarded-proto", "https"), ("sec-fetch-mode", "navigate"))
        assert envoy.status == 302
        assert envoy.header("location") == "/login?rd=https%3A%2F%2Fapp.example.com%2Fa%3Fb%3D1"
        traefik = await served.ask(
            "/forward-auth",
            ("sec-fetch-mode", "navigate"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example.com"),
            ("x-forwarded-uri", "/cart"),
        )
        assert traefik.header("location") == "/login?rd=https%3A%2F%2Fshop.example.com%2Fcart"


# --------------------------------------------------------------------------------------------------- hardening

# Non-UTF-8 bytes reach us as obs-text from Envoy (and any client); these tests write them as surrogate escapes,
# which request() sends as the original bytes.
NON_UTF8 = b"\xff\xfe\x80".decode("utf-8", "surrogateescape")


async def test_non_utf8_cookie_bytes_around_a_live_session_are_allowed_and_forwarded_byte_exact(served: Served) -> None:
    issued = await served.manager.create("alice")
    reader, writer = await served.connect()
    try:
        writer.write(request("/hello", ("cookie", f"a={NON_UTF8}; SESSION={issued.token}; b=caf\udce9")))
        response = await read_response(reader)
        assert response.status == 200 and response.header("x-user-id") == "alice"
        assert response.header("cookie") == f"a={NON_UTF8}; b=caf\udce9"  # the same bytes, not U+FFFD
    finally:
        writer.close()


@pytest.mark.parametrize("where", ["after", "before", "instead"])
async def test_non_utf8_bytes_in_the_session_cookie_are_a_401(served: Served, where: str) -> None:
    issued = await served.manager.create("alice")
    value = {"after": issued.token + NON_UTF8, "before": NON_UTF8 + issued.token, "instead": NON_UTF8}[where]
    response = await served.ask("/hello", ("cookie", f"SESSION={value}"), ("x-user-id", "alice"))
    assert response.status == 401 and response.header("x-user-id") is None


async def test_obs_text_in_other_headers_is_carried_and_a_non_utf8_spoof_is_removed(served: Served) -> None:
    issued = await served.manager.create("alice")
    response = await served.ask(
        "/hello", ("x-note", f"caf{NON_UTF8}"), ("X-User-Id", NON_UTF8), ("cookie", f"SESSION={issued.token}")
    )
    assert response.status == 200
    assert [v for n, v in response.headers if n == "x-user-id"] == ["alice"]
    anonymous = await served.ask("/public/x", ("X-User-Email", NON_UTF8), ("accept", NON_UTF8))
    assert (anonymous.status, anonymous.header(http.HEADERS_TO_REMOVE)) == (
        200,
        "x-user-email,x-user-id,x-user-roles,x-session-id",
    )


@pytest.mark.parametrize("control", ["\x00", "\x01", "\x0b", "\x7f"], ids=["nul", "soh", "vt", "del"])
async def test_control_bytes_in_a_cookie_are_refused_as_malformed_and_the_server_keeps_answering(
    served: Served, control: str
) -> None:
    issued = await served.manager.create("alice")
    reader, writer = await served.connect()
    try:
        writer.write(request("/hello", ("cookie", f"SESSION={issued.token}{control}")))
        response = await read_response(reader)
        assert (response.status, response.header("connection")) == (400, "close")
    finally:
        writer.close()
    assert (await served.ask("/hello", ("cookie", f"SESSION={issued.token}"))).status == 200


async def test_a_60_kib_cookie_header_under_the_size_bound_keeps_its_session(served: Served) -> None:
    issued = await served.manager.create("alice")
    junk = "; ".join(f"c{i}={'v' * 50}" for i in range(1100))  # ~60 KiB of other cookies before ours
    assert 58 * 1024 < len(junk) < 62 * 1024
    response = await served.ask("/hello", ("cookie", f"{junk}; SESSION={issued.token}"))
    assert response.status == 200 and response.header("x-user-id") == "alice"
    assert response.header("cookie") == junk
    unauthenticated = await served.ask("/hello", ("cookie", junk + "; SESSION=" + "A" * 2000))
    assert unauthenticated.status == 401


async def test_200_cookie_lines_with_the_session_in_the_last_one_are_read_whole(served: Served) -> None:
    issued = await served.manager.create("alice")
    lines = [("cookie", f"c{i}=v{i}") for i in range(199)]
    response = await served.ask("/hello", *lines, ("cookie", f"SESSION={issued.token}"))
    assert response.status == 200 and response.header("x-user-id") == "alice"
    assert response.header("cookie") == "; ".join(f"c{i}=v{i}" for i in range(199))


async def test_50_forged_session_cookies_do_not_use_up_the_three_tries(served: Served) -> None:
    # Only MAC-verified tokens count towards the 3 looked up; forged ones are dropped before the store.
    issued = await served.manager.create("alice")
    forged = [issued.token[:-2] + ("AA" if not issued.token.endswith("AA") else "BB") for _ in range(50)]
    cookie = "; ".join(f"SESSION={t}" for t in [*forged, issued.token])
    assert (await served.ask("/hello", ("cookie", cookie))).header("x-user-id") == "alice"
    unknown = [mint_token(RING, secrets.token_bytes(ENTROPY_BYTES), "abc123") for _ in range(3)]
    three_dead = "; ".join(f"SESSION={t}" for t in [*unknown, issued.token])
    assert (await served.ask("/hello", ("cookie", three_dead))).status == 401


async def test_odd_case_and_repeated_identity_spoofs_leave_one_trusted_value(served: Served) -> None:
    issued = await served.manager.create("alice")
    spoofs = [("X-uSeR-iD", "admin"), ("x-user-id", "root"), ("X-USER-ID", "root"), ("x-SESSION-id", "s")]
    response = await served.ask("/hello", *spoofs, ("x-USER-roles", "admin"), ("cookie", f"SESSION={issued.token}"))
    assert response.status == 200
    assert [v for n, v in response.headers if n == "x-user-id"] == ["alice"]
    assert [v for n, v in response.headers if n == "x-session-id"] == [issued.record.session_id]
    # alice has no roles and no email: the spoof goes, and so does any client-sent email
    assert response.header(http.HEADERS_TO_REMOVE) == "cookie,x-user-roles,x-user-email"


# --------------------------------------------------------------------------------------------------- serve()


async def test_listen_http_that_cannot_bind_is_a_runtime_failure_naming_the_key() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    store = MemoryStore()
    service = AuthzService(SETTINGS, store, KeyRingSource(store, RING), deadline=0.15)
    try:
        async with contextlib.AsyncExitStack() as running:
            with pytest.raises(RuntimeFailure, match=rf"listen\.http: cannot listen on 127\.0\.0\.1:{port}"):
                await app.start_http(running, f"127.0.0.1:{port}", service)
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_listen_http_is_served_and_stopped_with_the_exit_stack() -> None:
    store = MemoryStore()
    service = AuthzService(SETTINGS, store, KeyRingSource(store, RING), deadline=0.15)
    async with contextlib.AsyncExitStack() as running:
        assert await app.start_http(running, "", service) is None  # "" disables it
        server = await app.start_http(running, "127.0.0.1:0", service)
        assert server is not None
        port = server.address[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("/public/x"))
        assert (await read_response(reader)).status == 200
    assert await closed(reader), "an idle keep-alive connection is closed on shutdown"
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
