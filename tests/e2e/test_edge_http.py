"""CONTRACT.md "Behaviour at the edge" through Envoy's HTTP ext_authz (envoy-http.yaml → the sidecar's listen.http).

Every test of ``test_edge.py`` runs again here, unchanged, against this module's stack (``STACK_OPTIONS``:
``mode="http"``; the login stack follows the mode of the stack it shares). Below them: what only the HTTP
mode has (forward-auth on the sidecar itself, and that the forwarded headers cannot be smuggled through Envoy),
and what Envoy 1.40 does with ``x-envoy-auth-headers-to-remove`` and ``cookie``, checked against a scripted
authorization server rather than assumed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_edge import *  # noqa: F403 - the gRPC mode's edge tests and fixtures, collected again here
from tests.e2e.test_edge import (
    SPOOFED,
    Headers,
    assert_unauthenticated,
    cookie,
    describe,
    identity_namespace,
    send,
    upstream_cookies,
    upstream_headers,
)
from tests.support import processes, servers

pytestmark = pytest.mark.e2e

STACK_OPTIONS = {"mode": "http"}


def test_the_stack_asks_the_sidecar_over_http(stack: servers.Stack) -> None:
    assert stack.mode == "http" and stack.http_port
    assert "session_sidecar_http" in (stack.workdir / "stack-envoy.yaml").read_text()


# --------------------------------------------------------------------------------------------------- anti-spoofing


FORWARDED = [
    ("X-Forwarded-Uri", "/public/page"),
    ("X-Forwarded-Method", "GET"),
    ("X-Forwarded-Host", "public.example.com"),
    ("X-Original-URI", "/public/page"),
    ("X-Original-Method", "GET"),
]


@pytest.mark.parametrize("path", ["/forward-auth", "/forward-auth?x=1", "/hello", "/admin/panel"])
def test_forwarded_headers_sent_through_envoy_borrow_nothing(
    stack: servers.Stack, client: httpx.Client, path: str
) -> None:
    assert_unauthenticated(send(client, stack.url(path), FORWARDED))


# --------------------------------------------------------------------------------------------------- forward-auth


def forward_auth(client: httpx.Client, stack: servers.Stack, headers: list[tuple[str, str]]) -> httpx.Response:
    """What Traefik's forwardAuth / nginx's auth_request send: a GET to the sidecar's /forward-auth."""
    client.cookies.clear()
    return client.get(f"http://{servers.LOOPBACK}:{stack.http_port}/forward-auth", headers=headers)


def test_forward_auth_allows_with_identity_headers(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    response = forward_auth(
        client, stack, [("X-Forwarded-Uri", "/hello"), ("Cookie", f"a=1; SESSION={alice['token']}"), *SPOOFED]
    )
    assert response.status_code == 200, describe(response)
    assert response.headers["x-user-id"] == "alice"
    assert response.headers["x-session-id"] == alice["session_id"]
    assert response.headers["cookie"] == "a=1"
    removed = response.headers["x-envoy-auth-headers-to-remove"].split(",")
    assert "x-user-id" not in removed and "x-user-anything" in removed


def test_forward_auth_echoes_an_untouched_cookie(stack: servers.Stack, client: httpx.Client) -> None:
    # Traefik (authResponseHeaders: [Cookie]) and nginx (auth_request_set) replace Cookie with the answer's.
    response = forward_auth(client, stack, [("X-Forwarded-Uri", "/public/x"), ("Cookie", "a=1"), ("Cookie", "b=2")])
    assert response.status_code == 200, describe(response)
    assert response.headers["cookie"] == "a=1; b=2"


def test_forward_auth_decides_for_the_forwarded_route(
    stack: servers.Stack, client: httpx.Client, bob: dict[str, Any]
) -> None:
    assert forward_auth(client, stack, [("X-Forwarded-Uri", "/public/x")]).status_code == 200
    assert forward_auth(client, stack, [("X-Original-URI", "/public/x")]).status_code == 200
    assert forward_auth(client, stack, [("X-Forwarded-Uri", "/hello")]).status_code == 401
    denied = forward_auth(client, stack, [("X-Forwarded-Uri", "/admin/x"), cookie(bob["token"])])
    assert denied.status_code == 403, describe(denied)


def test_forward_auth_redirect_names_the_forwarded_url(login_stack: servers.Stack, client: httpx.Client) -> None:
    response = forward_auth(
        client,
        login_stack,
        [
            ("Sec-Fetch-Mode", "navigate"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "shop.example.com"),
            ("X-Forwarded-Uri", "/cart?id=7"),
        ],
    )
    assert response.status_code == 302, describe(response)
    assert response.headers["location"].endswith("rd=https%3A%2F%2Fshop.example.com%2Fcart%3Fid%3D7")


# --------------------------------------------------------------------------------------------------- Envoy's part


class ScriptedAuthz:
    """An HTTP authorization server that answers every request with one fixed response."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.requests: list[bytes] = []
        self.listener = socket.create_server((servers.LOOPBACK, 0))
        self.port: int = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while chunk := conn.recv(65536):
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    self.requests.append(head)
                    conn.sendall(self.response)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def scripted(stack: servers.Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ScriptedAuthz]]:
    """Envoy with envoy-http.yaml in front of the stack's echo, asking a ScriptedAuthz instead of the sidecar."""
    authz = ScriptedAuthz(b"")
    workdir: Path = tmp_path_factory.mktemp("scripted")
    port = processes.free_port()
    config = processes.render_envoy_config(
        processes.ENVOY_HTTP_TEMPLATE,
        listen_port=port,
        admin_port=processes.free_port(),
        sidecar_port=authz.port,
        upstream_port=stack.echo_port,
        out=workdir / "envoy.yaml",
        sidecar_cluster=processes.SIDECAR_HTTP_CLUSTER,
    )
    envoy = servers.Server("envoy", workdir / "envoy.log")
    envoy.attach(processes.start_envoy(config, envoy.log))
    try:
        envoy.wait_listening(port)
        yield f"http://{servers.LOOPBACK}:{port}", authz
    finally:
        envoy.stop()
        authz.close()


Scripted = tuple[str, ScriptedAuthz]


def through_scripted(
    scripted: Scripted, client: httpx.Client, answer: bytes, path: str, headers: Headers
) -> httpx.Response:
    """Send ``path`` through the scripted Envoy, whose authorization server answers ``answer``."""
    base, authz = scripted
    authz.response = answer
    authz.requests.clear()
    return send(client, base + path, headers)


def test_envoy_sends_every_header_line_separately(scripted: Scripted, client: httpx.Client) -> None:
    headers = [("Cookie", "a=1"), ("Cookie", "SESSION=t"), ("X-User-Id", "a"), ("x-user-id", "b")]
    through_scripted(scripted, client, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", "/p?q=1", headers)
    lines = scripted[1].requests[-1].decode().split("\r\n")
    assert lines[0] == "GET /p?q=1 HTTP/1.1"
    assert [line for line in lines if line.startswith(("cookie:", "x-user-id:"))] == [
        "cookie: a=1",
        "cookie: SESSION=t",
        "x-user-id: a",
        "x-user-id: b",
    ]


def test_envoy_removes_listed_headers_cookie_included_even_when_also_set(
    scripted: Scripted, client: httpx.Client
) -> None:
    """Why the sidecar never lists a name both to set and to remove: Envoy removes after it sets."""
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-user-id: trusted\r\nx-user-email: kept@example.com\r\n"
        b"cookie: rewritten=1\r\nx-envoy-auth-headers-to-remove: x-user-id, Cookie,x-session-id\r\n\r\n"
    )
    request = [("Cookie", "SESSION=t; a=1"), ("x-user-id", "evil"), ("x-session-id", "s")]
    headers = upstream_headers(through_scripted(scripted, client, answer, "/r", request))
    assert identity_namespace(headers) == {"x-user-email": ["kept@example.com"]}
    assert upstream_cookies(headers) == []
    assert "x-envoy-auth-headers-to-remove" not in headers


def test_envoy_relays_a_5xx_answer_as_its_status_on_error(scripted: Scripted, client: httpx.Client) -> None:
    answer = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        b'content-length: 15\r\n\r\n{"error":"503"}'
    )
    response = through_scripted(scripted, client, answer, "/o", [cookie("t")])
    assert response.status_code == 503, describe(response)
    assert '"headers"' not in response.text


# --------------------------------------------------------------------------------------------------- allowed_headers


def _without_identity_prefixes(bootstrap: dict[str, Any]) -> None:
    """A plausible operator's http_service: allowed_headers without the x-user-/x-session- prefix patterns."""
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            allowed = node.get("allowed_headers")
            if isinstance(allowed, dict) and "patterns" in allowed:
                allowed["patterns"] = [p for p in allowed["patterns"] if "prefix" not in p]
                found.append(allowed)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(bootstrap)
    assert found, "no allowed_headers in the Envoy bootstrap"


@pytest.fixture(scope="module")
def narrow_stack(stack: servers.Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Stack]:
    narrow = servers.start_stack(
        tmp_path_factory.mktemp("narrow"), share=stack, name="narrow", envoy_patch=_without_identity_prefixes
    )
    try:
        yield narrow
    finally:
        narrow.close()


SPOOFED_IDENTITY = [
    ("X-User-Id", "mallory"),
    ("X-User-Email", "m@example.com"),
    ("X-User-Roles", "admin"),
    ("X-Session-Id", "s"),
    ("X-User-Assertion", "forged.jwt.x"),
]


def test_an_anonymous_allow_strips_the_configured_names_envoy_never_showed_the_sidecar(
    narrow_stack: servers.Stack, client: httpx.Client
) -> None:
    headers = upstream_headers(send(client, narrow_stack.url("/public/x"), SPOOFED_IDENTITY))
    assert identity_namespace(headers) == {}


def test_a_session_allow_carries_only_the_trusted_identity_behind_a_narrow_allowed_headers(
    narrow_stack: servers.Stack, client: httpx.Client, bob: dict[str, Any]
) -> None:
    headers = upstream_headers(send(client, narrow_stack.url("/hello"), [*SPOOFED_IDENTITY, cookie(bob["token"])]))
    assert identity_namespace(headers) == {
        "x-user-id": ["bob"],
        "x-user-email": ["bob@example.com"],
        "x-user-roles": ["dev"],
        "x-session-id": [bob["session_id"]],
    }
