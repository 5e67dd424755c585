"""Forward-auth behind nginx (real, auth_request → /forward-auth; the shipped recipe and a forgetful one), Traefik
and ingress-nginx (their header sets at the listener).

The recipe is mesh-config/nginx/forward-auth.conf, included as it ships. nginx passes every client header it does
not set itself on to the auth request, so a client can add ``X-Forwarded-Uri`` (the header Traefik sets) next to
the ``X-Original-URI`` nginx sets. Whatever it adds, a request is decided for the path nginx names or a stricter
one: no session is 401, a session without the admin role is 403, and the app behind nginx is never reached.
The upstream here is a small recorder, so "never reached" is counted, not inferred. Traefik and ingress-nginx
do not run on this machine: their header sets (and the client headers they pass on) are sent to /forward-auth
as they would send them.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import servers
from tests.support.nginx import nginx_binary, start_nginx

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (make test installs nginx-light)"),
]

RECIPE = Path(__file__).resolve().parents[2] / "mesh-config" / "nginx" / "forward-auth.conf"
# A recipe that forgets lines: nginx then passes the client's own X-Original-Method / X-Forwarded-Host / -Proto.
FORGOTTEN = ("X-Original-Method", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-For")


class Recorder(ThreadingHTTPServer):
    """The app behind nginx: answers 200 with the headers it got, and records every path it was asked for."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((servers.LOOPBACK, 0), _RecordingHandler)
        self.paths: list[str] = []
        self.lock = threading.Lock()


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.paths.append(self.path)
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps({"path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    app = Recorder()
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Stack]:
    """Valkey and the sidecar in HTTP mode; the sidecar trusts one X-Forwarded-For hop (the recipe's nginx)."""
    stack = servers.start_stack(
        tmp_path_factory.mktemp("nginx-stack"), mode="http", extra_config={"forward_auth": {"trusted_hops": 1}}
    )
    try:
        yield stack
    finally:
        stack.close()


def _nginx(stack: servers.Stack, recorder: Recorder, workdir: Path, recipe: str) -> Iterator[str]:
    upstreams = {"session_sidecar": stack.http_port, "app": recorder.server_address[1]}
    server, port = start_nginx(workdir, upstreams, recipe)
    try:
        yield f"http://{servers.LOOPBACK}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shipped(stack: servers.Stack, recorder: Recorder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _nginx(stack, recorder, tmp_path_factory.mktemp("nginx"), RECIPE.read_text())


@pytest.fixture(scope="module")
def forgetful(stack: servers.Stack, recorder: Recorder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    lines = [
        line for line in RECIPE.read_text().splitlines() if not any(f"proxy_set_header {h} " in line for h in FORGOTTEN)
    ]
    yield from _nginx(stack, recorder, tmp_path_factory.mktemp("nginx-forgetful"), "\n".join(lines))


@pytest.fixture(params=["shipped", "forgetful"])
def nginx(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(request.param)
    return url


@pytest.fixture(scope="module")
def dev(stack: servers.Stack) -> dict[str, Any]:
    return stack.create_session("dev-user", roles=["dev"])


@pytest.fixture(scope="module")
def admin(stack: servers.Stack) -> dict[str, Any]:
    return stack.create_session("admin-user", email="root@example.com", roles=["admin"])


def get(base: str, path: str, headers: list[tuple[str, str]]) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(base + path, headers=headers)


def reached(recorder: Recorder, marker: str) -> list[str]:
    with recorder.lock:
        return [path for path in recorder.paths if marker in path]


# Headers a client adds to name a public path (Traefik's, ingress-nginx's and nginx's own names), and to pick
# the method, host and scheme the policy would see.
SPOOFS: list[tuple[str, str]] = [
    ("X-Forwarded-Uri", "/public/x"),
    ("X-Original-URL", "http://127.0.0.1/public/x"),  # the host nginx names: only the path differs
    ("X-Original-URI", "/public/x"),  # nginx overwrites this one; it must not matter either way
    ("X-Forwarded-Method", "GET"),
]


@pytest.mark.parametrize("spoof", SPOOFS, ids=lambda h: h[0])
def test_a_client_named_public_path_gets_401_without_a_session(
    nginx: str, recorder: Recorder, spoof: tuple[str, str]
) -> None:
    marker = f"nosession-{spoof[0]}"
    response = get(nginx, f"/admin/secret?{marker}", [spoof])
    assert response.status_code == 401, response.text
    assert reached(recorder, marker) == []


@pytest.mark.parametrize("spoof", SPOOFS, ids=lambda h: h[0])
def test_a_client_named_public_path_gets_403_for_a_session_without_the_role(
    nginx: str, recorder: Recorder, dev: dict[str, Any], spoof: tuple[str, str]
) -> None:
    marker = f"dev-{spoof[0]}"
    response = get(nginx, f"/admin/secret?{marker}", [spoof, ("Cookie", f"SESSION={dev['token']}")])
    assert response.status_code == 403, response.text
    assert reached(recorder, marker) == []


def test_all_spoofs_at_once_change_nothing(nginx: str, recorder: Recorder, dev: dict[str, Any]) -> None:
    headers = [*SPOOFS, ("X-Forwarded-Host", "public.example.com"), ("Cookie", f"SESSION={dev['token']}")]
    response = get(nginx, "/admin/secret?all-spoofs", headers)
    assert response.status_code == 403, response.text
    assert reached(recorder, "all-spoofs") == []


def test_a_client_named_host_that_disagrees_with_nginx_is_403(
    shipped: str, recorder: Recorder, stack: servers.Stack
) -> None:
    # Only where nginx names the host (the shipped recipe sets X-Forwarded-Host): routes never depend on it.
    response = get(shipped, "/public/x?host", [("X-Original-URL", "https://elsewhere.example/public/x")])
    assert response.status_code == 403, response.text  # nginx answers its own 403 page for the sidecar's
    assert '"reason":"forwarded_conflict"' in stack.logs(20)
    assert reached(recorder, "?host") == []


def test_the_admin_gets_through_with_the_trusted_identity_only(
    nginx: str, recorder: Recorder, admin: dict[str, Any]
) -> None:
    spoofed = [("X-User-Id", "mallory"), ("X-User-Roles", "admin"), ("X-Session-Id", "s")]
    response = get(nginx, "/admin/secret?admin", [*SPOOFS[:1], *spoofed, ("Cookie", f"a=1; SESSION={admin['token']}")])
    assert response.status_code == 200, response.text
    seen = response.json()["headers"]
    assert seen["x-user-id"] == ["admin-user"]
    assert seen["x-user-roles"] == ["admin"]
    assert seen["x-user-email"] == ["root@example.com"]
    assert seen["x-session-id"] == [admin["session_id"]]
    assert seen["cookie"] == ["a=1"]  # the session cookie stays with the sidecar


def test_a_public_path_is_anonymous_and_drops_a_client_sent_identity(nginx: str, recorder: Recorder) -> None:
    marker = secrets.token_hex(8)
    response = get(nginx, f"/public/page?{marker}", [("X-User-Id", "mallory"), ("X-User-Email", "m@example.com")])
    assert response.status_code == 200, response.text
    seen = response.json()["headers"]
    assert "x-user-id" not in seen and "x-user-email" not in seen
    assert reached(recorder, marker) == [f"/public/page?{marker}"]


def test_a_double_encoded_dot_dot_under_public_keeps_the_admin_rule(nginx: str, recorder: Recorder) -> None:
    response = get(nginx, "/public/%252e%252e/admin/x?double", [])
    assert response.status_code == 401, response.text
    assert reached(recorder, "double") == []


def test_the_abuse_counter_sees_the_address_nginx_appended_not_the_clients_claim(
    stack: servers.Stack, shipped: str
) -> None:
    forged = "SESSION=" + "A" * 43
    response = get(shipped, "/hello?abuse", [("X-Forwarded-For", "203.0.113.77"), ("Cookie", forged)])
    assert response.status_code == 401
    lines = [json.loads(line) for line in stack.logs(400).splitlines() if line.startswith('{"ts"')]
    denials = [line for line in lines if line.get("path") == "/hello" and line.get("reason") == "session_invalid"]
    assert denials, stack.logs()
    assert {line["source"] for line in denials} == {servers.LOOPBACK}


# ------------------------------------------------------------------------------------------ Traefik, ingress-nginx
# Neither runs on this machine: what each sets on its auth request is sent to the sidecar's /forward-auth as that
# proxy would, plus the header the client adds (which the proxy passes on because it does not set it itself).

PROXY_REQUESTS: dict[str, list[tuple[str, str]]] = {
    "traefik": [
        ("X-Forwarded-Method", "GET"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "app.example.com"),
        ("X-Forwarded-Uri", "/admin/secret"),
        ("X-Forwarded-For", "198.51.100.7"),
    ],
    "ingress-nginx": [
        ("X-Original-URL", "https://app.example.com/admin/secret"),
        ("X-Original-Method", "GET"),
        ("X-Original-URI", "/admin/secret"),  # set by mesh-config/linkerd/ingress-nginx.yaml's ConfigMap
        ("X-Forwarded-For", "198.51.100.7"),
    ],
}
CLIENT_SPOOFS: dict[str, list[tuple[str, str]]] = {
    "traefik": [("X-Original-URI", "/public/x"), ("X-Original-URL", "https://app.example.com/public/x")],
    "ingress-nginx": [("X-Forwarded-Uri", "/public/x")],
}
CASES = [(proxy, spoof) for proxy, spoofs in CLIENT_SPOOFS.items() for spoof in spoofs]


def at_listener(stack: servers.Stack, headers: list[tuple[str, str]]) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.get(f"http://{servers.LOOPBACK}:{stack.http_port}/forward-auth", headers=headers)


@pytest.mark.parametrize(("proxy", "spoof"), CASES, ids=[f"{p}-{s[0]}" for p, s in CASES])
@pytest.mark.parametrize("spoof_first", [True, False], ids=["spoof_first", "spoof_last"])
def test_a_client_header_behind_traefik_or_ingress_nginx_cannot_make_admin_public(
    stack: servers.Stack, dev: dict[str, Any], proxy: str, spoof: tuple[str, str], spoof_first: bool
) -> None:
    sent = PROXY_REQUESTS[proxy]
    headers = [spoof, *sent] if spoof_first else [*sent, spoof]
    assert at_listener(stack, headers).status_code == 401
    assert at_listener(stack, [*headers, ("Cookie", f"SESSION={dev['token']}")]).status_code == 403


@pytest.mark.parametrize("proxy", sorted(PROXY_REQUESTS))
def test_what_traefik_or_ingress_nginx_sets_alone_is_decided_for_that_path(
    stack: servers.Stack, admin: dict[str, Any], proxy: str
) -> None:
    sent = PROXY_REQUESTS[proxy]
    assert at_listener(stack, sent).status_code == 401
    allowed = at_listener(stack, [*sent, ("Cookie", f"SESSION={admin['token']}")])
    assert allowed.status_code == 200 and allowed.headers["x-user-id"] == "admin-user"
