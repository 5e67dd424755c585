"""CONTRACT.md "Behaviour at the edge", checked through a real Envoy in front of the echo upstream.

One stack (Valkey + sidecar + echo + Envoy) serves the whole module; the login-redirect tests add a second
sidecar + Envoy (with ``deny.login_url`` set) on the same Valkey and echo. Every request goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from tests.support import servers

pytestmark = pytest.mark.e2e

LOGIN_URL = "https://login.example.com/start"
IDENTITY = ("x-user-id", "x-user-email", "x-user-roles", "x-session-id")
B64URL = string.ascii_letters + string.digits + "-_"
Headers = Sequence[tuple[str, str]]


# --------------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10.0, follow_redirects=False) as c:
        yield c


@pytest.fixture(scope="module")
def alice(stack: servers.Stack) -> dict[str, Any]:
    return stack.create_session("alice", email="alice@example.com", roles=("admin", "dev"))


@pytest.fixture(scope="module")
def bob(stack: servers.Stack) -> dict[str, Any]:
    return stack.create_session("bob", email="bob@example.com", roles=("dev",))


@pytest.fixture(scope="module")
def login_stack(stack: servers.Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Stack]:
    """A second sidecar + Envoy with ``deny.login_url`` set, sharing the main stack's Valkey and echo."""
    workdir: Path = tmp_path_factory.mktemp("login-stack")
    second = servers.start_stack(workdir, login_url=LOGIN_URL, share=stack, name="login")
    try:
        yield second
    finally:
        second.close()


def send(client: httpx.Client, url: str, headers: Headers = ()) -> httpx.Response:
    client.cookies.clear()  # only the Cookie headers a test writes itself
    return client.get(url, headers=list(headers))


def upstream_headers(response: httpx.Response) -> dict[str, list[str]]:
    """The headers the echo upstream received (asserts the request was allowed through)."""
    assert response.status_code == 200, f"expected the upstream's 200, got {describe(response)}"
    body = response.json()
    assert set(body) >= {"method", "path", "headers"}, body
    headers: dict[str, list[str]] = body["headers"]
    return headers


def describe(response: httpx.Response) -> str:
    return (
        f"{response.request.method} {response.request.url} -> {response.status_code} "
        f"{dict(response.headers)} {response.text[:500]!r}"
    )


def upstream_cookies(headers: dict[str, list[str]]) -> list[str]:
    pairs: list[str] = []
    for line in headers.get("cookie", []):
        pairs += [p.strip() for p in line.split(";") if p.strip()]
    return pairs


def identity_namespace(headers: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: v for k, v in headers.items() if k.startswith(("x-user-", "x-session-"))}


def assert_identity(headers: dict[str, list[str]], session: dict[str, Any], user: str, roles: str) -> None:
    assert headers.get("x-user-id") == [user], headers
    assert headers.get("x-user-roles") == [roles], headers
    assert headers.get("x-session-id") == [session["session_id"]], headers


def assert_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, describe(response)
    assert response.headers.get("www-authenticate"), describe(response)
    try:
        body = response.json()
    except json.JSONDecodeError:
        pytest.fail(f"401 without a JSON body: {describe(response)}")
    assert body.get("error") == "unauthenticated", describe(response)
    assert "headers" not in body, "a denial must not come from the upstream"


def forge(token: str) -> str:
    """The token with one character of its MAC (the last dot-separated part) changed."""
    head, dot, mac = token.rpartition(".")
    if not dot or not mac:
        i = len(token) // 2
        return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
    # Change the first MAC character: the last one of a base64 string can carry only padding bits.
    return f"{head}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"


def lookalike(token: str) -> str:
    """A never-issued token of the same shape: every base64url character replaced by a random one."""
    return "".join(secrets.choice(B64URL) if c in B64URL and i > 3 else c for i, c in enumerate(token))


def cookie(*tokens: str) -> tuple[str, str]:
    return ("Cookie", "; ".join(f"SESSION={t}" for t in tokens))


# --------------------------------------------------------------------------------------------------- allowed


def test_allowed_request_gets_trusted_identity(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    assert isinstance(alice.get("token"), str) and alice["token"], alice
    assert not alice["token"].startswith("-")
    assert alice.get("session_id") and alice["session_id"] != alice["token"]
    response = send(client, stack.url("/hello?q=1"), [cookie(alice["token"])])
    headers = upstream_headers(response)
    assert response.json()["path"] == "/hello?q=1"
    assert_identity(headers, alice, "alice", "admin,dev")
    assert headers.get("x-user-email") == ["alice@example.com"]


def test_session_create_output(alice: dict[str, Any]) -> None:
    set_cookie = alice["set_cookie"]
    assert set_cookie.startswith("SESSION=" + alice["token"])
    attrs = [a.strip().lower() for a in set_cookie.split(";")[1:]]
    for flag in ("secure", "httponly", "samesite=lax", "path=/"):
        assert flag in attrs, set_cookie
    assert any(a.startswith("max-age=") for a in attrs), set_cookie
    assert alice["expires_at"]


def test_user_without_email_or_roles(stack: servers.Stack, client: httpx.Client) -> None:
    session = stack.create_session("plain")
    headers = upstream_headers(send(client, stack.url("/x"), [cookie(session["token"])]))
    assert headers.get("x-user-id") == ["plain"]
    assert headers.get("x-session-id") == [session["session_id"]]
    assert "x-user-email" not in headers
    assert "x-user-roles" not in headers, headers  # "x-user-roles (when any)"


# --------------------------------------------------------------------------------------------------- spoofing

SPOOFED: list[tuple[str, str]] = [
    ("X-User-Id", "admin"),
    ("x-user-id", "root"),
    ("x-user-id", "root2"),
    ("X-USER-ROLES", "admin,superuser"),
    ("x-user-email", "evil@example.com"),
    ("x-user-anything", "sneaky"),
    ("X-User-Anything", "sneaky2"),
    ("X-Session-Id", "forged-session"),
    ("x-SESSION-id", "forged-session-2"),
    ("x-session-other", "x"),
]


def test_spoofed_identity_headers_are_replaced_on_allowed_route(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    headers = upstream_headers(send(client, stack.url("/hello"), [*SPOOFED, cookie(alice["token"])]))
    assert identity_namespace(headers) == {
        "x-user-id": ["alice"],
        "x-user-email": ["alice@example.com"],
        "x-user-roles": ["admin,dev"],
        "x-session-id": [alice["session_id"]],
    }


def test_spoofed_identity_headers_are_removed_on_public_route(stack: servers.Stack, client: httpx.Client) -> None:
    headers = upstream_headers(send(client, stack.url("/public/page"), SPOOFED))
    assert identity_namespace(headers) == {}


def test_public_route_with_bad_cookie_is_anonymous(stack: servers.Stack, client: httpx.Client) -> None:
    headers = upstream_headers(send(client, stack.url("/public/x"), [*SPOOFED, ("Cookie", "SESSION=garbage")]))
    assert identity_namespace(headers) == {}


def test_public_route_with_valid_session_injects_identity(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    headers = upstream_headers(send(client, stack.url("/public/x"), [*SPOOFED, cookie(alice["token"])]))
    assert identity_namespace(headers) == {
        "x-user-id": ["alice"],
        "x-user-email": ["alice@example.com"],
        "x-user-roles": ["admin,dev"],
        "x-session-id": [alice["session_id"]],
    }


def test_spoofed_headers_without_session_are_denied(stack: servers.Stack, client: httpx.Client) -> None:
    assert_unauthenticated(send(client, stack.url("/hello"), SPOOFED))


# --------------------------------------------------------------------------------------------------- cookies


def test_session_cookie_is_stripped_other_cookies_kept(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    header = ("Cookie", f"a=1; SESSION={alice['token']}; b=2")
    headers = upstream_headers(send(client, stack.url("/c"), [header]))
    cookies = upstream_cookies(headers)
    assert "a=1" in cookies and "b=2" in cookies, headers.get("cookie")
    assert not any(c.startswith("SESSION=") for c in cookies), headers.get("cookie")
    assert alice["token"] not in json.dumps(headers)


def test_only_session_cookie_leaves_no_cookie_header(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    headers = upstream_headers(send(client, stack.url("/c"), [cookie(alice["token"])]))
    assert upstream_cookies(headers) == [], headers.get("cookie")


def test_session_cookie_in_its_own_cookie_header_line(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    headers = upstream_headers(
        send(client, stack.url("/c"), [("Cookie", "a=1"), cookie(alice["token"]), ("Cookie", "b=2")])
    )
    assert_identity(headers, alice, "alice", "admin,dev")
    cookies = upstream_cookies(headers)
    assert "a=1" in cookies and "b=2" in cookies, headers.get("cookie")
    assert alice["token"] not in json.dumps(headers)


# --------------------------------------------------------------------------------------------------- denied


@pytest.mark.parametrize(
    "make_headers",
    [
        pytest.param(lambda tok: [], id="no-cookie"),
        pytest.param(lambda tok: [("Cookie", "other=1")], id="other-cookie-only"),
        pytest.param(lambda tok: [("Cookie", "SESSION=garbage")], id="garbage"),
        pytest.param(lambda tok: [("Cookie", "SESSION=")], id="empty"),
        pytest.param(lambda tok: [cookie(forge(tok))], id="forged-mac"),
        pytest.param(lambda tok: [cookie(lookalike(tok))], id="unknown"),
        pytest.param(lambda tok: [cookie(tok + "A")], id="extended"),
        pytest.param(lambda tok: [("Cookie", f"session={tok}")], id="wrong-name-case"),
    ],
)
def test_denied_without_a_live_session(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any], make_headers: Any
) -> None:
    assert_unauthenticated(send(client, stack.url("/some/path?x=1"), make_headers(alice["token"])))


def test_browser_navigation_without_login_url_is_401(stack: servers.Stack, client: httpx.Client) -> None:
    response = send(
        client,
        stack.url("/some/path?x=1"),
        [("Sec-Fetch-Mode", "navigate"), ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
    )
    assert_unauthenticated(response)


def _assert_login_redirect(response: httpx.Response, expected_rd: str) -> None:
    assert response.status_code == 302, describe(response)
    location = response.headers.get("location", "")
    assert location.startswith(LOGIN_URL), describe(response)
    query = parse_qs(urlsplit(location).query)
    assert query.get("rd") == [expected_rd], location


@pytest.mark.parametrize(
    "browser_headers",
    [
        pytest.param([("Sec-Fetch-Mode", "navigate")], id="sec-fetch-mode"),
        pytest.param([("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")], id="accept-html"),
    ],
)
def test_browser_navigation_redirects_to_login(
    login_stack: servers.Stack, client: httpx.Client, browser_headers: Headers
) -> None:
    response = send(client, login_stack.url("/some/path?x=1"), browser_headers)
    _assert_login_redirect(response, f"http://127.0.0.1:{login_stack.envoy_port}/some/path?x=1")


def test_browser_navigation_with_forged_cookie_redirects(
    login_stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    response = send(
        client, login_stack.url("/a/b?x=1&y=%20z"), [("Sec-Fetch-Mode", "navigate"), cookie(forge(alice["token"]))]
    )
    _assert_login_redirect(response, f"http://127.0.0.1:{login_stack.envoy_port}/a/b?x=1&y=%20z")


def test_api_request_with_login_url_still_gets_401(login_stack: servers.Stack, client: httpx.Client) -> None:
    assert_unauthenticated(send(client, login_stack.url("/some/path?x=1"), [("Accept", "application/json")]))


def test_login_stack_allows_valid_session(
    login_stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    response = send(client, login_stack.url("/x"), [("Sec-Fetch-Mode", "navigate"), cookie(alice["token"])])
    assert_identity(upstream_headers(response), alice, "alice", "admin,dev")


# --------------------------------------------------------------------------------------------------- several


def test_several_session_cookies_first_live_one_wins(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any], bob: dict[str, Any]
) -> None:
    revoked = stack.create_session("mallory", roles=("admin",))
    stack.revoke(revoked["token"])
    headers = upstream_headers(send(client, stack.url("/m"), [cookie("garbage", revoked["token"], bob["token"])]))
    assert_identity(headers, bob, "bob", "dev")

    headers = upstream_headers(send(client, stack.url("/m"), [cookie(alice["token"], bob["token"])]))
    assert_identity(headers, alice, "alice", "admin,dev")
    headers = upstream_headers(send(client, stack.url("/m"), [cookie(bob["token"], alice["token"])]))
    assert_identity(headers, bob, "bob", "dev")
    # Spread over separate Cookie header lines: header order still decides.
    headers = upstream_headers(
        send(client, stack.url("/m"), [cookie(bob["token"]), ("Cookie", "x=1"), cookie(alice["token"])])
    )
    assert_identity(headers, bob, "bob", "dev")


def test_at_most_three_session_cookies_are_tried(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    dead = [stack.create_session(f"dead{i}") for i in range(3)]
    for session in dead:
        stack.revoke(session["token"])
    tokens = [s["token"] for s in dead]
    assert_unauthenticated(send(client, stack.url("/m"), [cookie(*tokens, alice["token"])]))
    headers = upstream_headers(send(client, stack.url("/m"), [cookie(*tokens[:2], alice["token"])]))
    assert_identity(headers, alice, "alice", "admin,dev")


# --------------------------------------------------------------------------------------------------- roles


def test_route_requiring_a_role_the_session_lacks_is_403(
    stack: servers.Stack, client: httpx.Client, bob: dict[str, Any]
) -> None:
    response = send(client, stack.url("/admin/panel"), [cookie(bob["token"])])
    assert response.status_code == 403, describe(response)
    assert '"headers"' not in response.text, "a denial must not come from the upstream"


def test_route_requiring_a_role_the_session_has_is_allowed(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    headers = upstream_headers(send(client, stack.url("/admin/panel"), [cookie(alice["token"])]))
    assert_identity(headers, alice, "alice", "admin,dev")


def test_role_route_without_session_is_401(stack: servers.Stack, client: httpx.Client) -> None:
    assert_unauthenticated(send(client, stack.url("/admin/panel")))


@pytest.mark.parametrize("path", ["/public/../admin/panel", "//admin/panel", "/%61dmin/panel", "/public%2F..%2Fadmin"])
def test_path_tricks_do_not_escape_the_admin_rule(
    stack: servers.Stack, client: httpx.Client, bob: dict[str, Any], path: str
) -> None:
    # httpx would normalise "..": send the raw target.
    request = client.build_request("GET", stack.url("/"), headers=[cookie(bob["token"])])
    request.url = request.url.copy_with(raw_path=path.encode())
    client.cookies.clear()
    response = client.send(request)
    if response.status_code == 200:
        seen = unquote(response.json()["path"])
        assert not seen.startswith("/admin"), f"{path} reached the upstream as {seen} for a non-admin"
    else:
        assert response.status_code in (301, 302, 307, 308, 400, 403, 404), describe(response)


# --------------------------------------------------------------------------------------------------- lifetime


def test_idle_timeout_expires_the_session(stack: servers.Stack, client: httpx.Client) -> None:
    session = stack.create_session("idler", idle_timeout="2s")
    headers = upstream_headers(send(client, stack.url("/i"), [cookie(session["token"])]))
    assert headers.get("x-user-id") == ["idler"]
    time.sleep(3.2)
    assert_unauthenticated(send(client, stack.url("/i"), [cookie(session["token"])]))


def test_revoke_takes_effect_on_the_next_request(stack: servers.Stack, client: httpx.Client) -> None:
    session = stack.create_session("rita")
    for _ in range(3):  # warm any cache
        upstream_headers(send(client, stack.url("/r"), [cookie(session["token"])]))
    stack.revoke(session["token"])
    assert_unauthenticated(send(client, stack.url("/r"), [cookie(session["token"])]))


def test_revoke_user_revokes_every_session_of_that_user(stack: servers.Stack, client: httpx.Client) -> None:
    first = stack.create_session("dave")
    second = stack.create_session("dave", roles=("admin",))
    other = stack.create_session("erin")
    for session in (first, second, other):
        upstream_headers(send(client, stack.url("/r"), [cookie(session["token"])]))
    assert stack.revoke_user("dave") == {"revoked": 2}
    for session in (first, second):
        assert_unauthenticated(send(client, stack.url("/r"), [cookie(session["token"])]))
    headers = upstream_headers(send(client, stack.url("/r"), [cookie(other["token"])]))
    assert headers.get("x-user-id") == ["erin"]


# --------------------------------------------------------------------------------------------------- outage


def test_store_outage_fails_closed_and_recovers(
    stack: servers.Stack, client: httpx.Client, alice: dict[str, Any]
) -> None:
    """Keep this test last in the module: it stops and restarts the shared Valkey."""
    warm = stack.create_session("warm", roles=("dev",))
    upstream_headers(send(client, stack.url("/o"), [cookie(warm["token"])]))  # cached, if there is a cache
    stack.stop_valkey()
    try:
        time.sleep(0.3)
        for token in (warm["token"], alice["token"]):
            started = time.monotonic()
            response = send(client, stack.url("/o"), [cookie(token)])
            elapsed = time.monotonic() - started
            assert response.status_code == 503, describe(response)
            assert elapsed < 2.0, f"the 503 took {elapsed:.2f}s"
            assert '"headers"' not in response.text, "a denial must not come from the upstream"

        started = time.monotonic()
        headers = upstream_headers(send(client, stack.url("/public/o"), [*SPOOFED, cookie(alice["token"])]))
        assert time.monotonic() - started < 2.0
        assert identity_namespace(headers) == {}, "the public route must be anonymous while the store is down"
    finally:
        stack.start_valkey()

    deadline = time.monotonic() + 10
    while True:
        response = send(client, stack.url("/o"), [cookie(warm["token"])])
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert_identity(upstream_headers(response), warm, "warm", "dev")
    fresh = stack.create_session("fresh")
    assert upstream_headers(send(client, stack.url("/o"), [cookie(fresh["token"])]))["x-user-id"] == ["fresh"]
