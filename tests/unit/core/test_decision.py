"""Tests for sidecar.core.decision: what a request carries, and the Allow/Deny it gets at the edge."""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sidecar.core import decision as decision_module
from sidecar.core.decision import (
    NO_SESSION,
    Allow,
    Decision,
    Deny,
    EdgeSettings,
    Found,
    Inspection,
    allow,
    decide,
    header_bytes,
    inspect,
)
from sidecar.core.policy import DEFAULT_ROUTE, Route, RoutePolicy
from sidecar.core.reasons import Reason
from sidecar.core.request import RequestView
from sidecar.core.session import SessionRecord, new_session
from sidecar.core.tokens import ENTROPY_BYTES, KeyRing, mint_token
from tests.support.edge import SETTINGS

PUBLIC = Route("/public", public=True)
ADMIN = Route("/admin", roles=("admin",))

assert SETTINGS.policy == RoutePolicy.of([PUBLIC, ADMIN])  # the shared settings carry exactly these routes
LOGIN = "https://login.example/login"
WITH_LOGIN = replace(SETTINGS, login_url=LOGIN)
NO_STRIP = replace(SETTINGS, strip_upstream=False)

RING = KeyRing.of([("k1", b"\x01" * 32)])
FORGER = KeyRing.of([("k1", b"\x02" * 32)])  # same kid, wrong secret

NOW = 1_700_000_000.0
CHROME_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
IDENTITY_NAMES = {"x-user-id", "x-user-email", "x-user-roles", "x-session-id"}


def _token(ring: KeyRing = RING) -> str:
    return mint_token(ring, secrets.token_bytes(ENTROPY_BYTES), "abc123")


V1 = _token()
FORGED = _token(FORGER)


def _session(**overrides: Any) -> SessionRecord:
    kwargs: dict[str, Any] = {
        "session_id": "sid-1",
        "user_id": "u1",
        "email": "u1@example.com",
        "roles": ("admin", "dev"),
        "attributes": {},
        "idle_timeout": 1800.0,
        "absolute_timeout": 43_200.0,
        "now": NOW,
    }
    kwargs.update(overrides)
    return new_session(**kwargs)


FULL = _session()
NO_EMAIL = _session(email=None)
NO_ROLES = _session(roles=())
BARE = _session(email=None, roles=())
DEV_ONLY = _session(roles=("dev",))


def _found(record: SessionRecord | None) -> Found:
    return Found.session(record) if record is not None else NO_SESSION


def _request(
    path: str = "/app",
    *headers: tuple[str, str],
    scheme: str = "https",
    host: str = "app.example",
) -> RequestView:
    return RequestView(method="GET", scheme=scheme, host=host, path=path, headers=tuple(headers))


def _assert_disjoint(decision: Decision) -> Allow:
    assert isinstance(decision, Allow), decision
    set_names = [name for name, _ in decision.headers_to_set]
    assert set(set_names).isdisjoint(decision.headers_to_remove), "a name is both set and removed"
    assert len(set_names) == len(set(set_names)), "a name is set twice"
    assert len(decision.headers_to_remove) == len(set(decision.headers_to_remove)), "a name is removed twice"
    return decision


def _json_body(deny: Deny) -> dict[str, Any]:
    assert ("content-type", "application/json") in deny.headers
    body = json.loads(deny.body)
    assert isinstance(body, dict)
    return body


# --------------------------------------------------------------------------------------------------------
# inspect: session cookies
# --------------------------------------------------------------------------------------------------------

SESSION_COOKIES: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("no_cookie_header", [], ()),
    ("no_session_cookie", ["a=1; b=2"], ()),
    ("one_session_cookie", ["a=1; SESSION=t1; b=2"], ("t1",)),
    ("several_in_one_line", ["SESSION=t1; SESSION=t2"], ("t1", "t2")),
    ("across_several_lines_in_order", ["a=1; SESSION=t1", "SESSION=t2; b=2", "SESSION=t3"], ("t1", "t2", "t3")),
    ("name_is_case_sensitive", ["session=x; Session=y; SESSION=z"], ("z",)),
    ("name_must_match_exactly", ["SESSIONX=x; XSESSION=y; SESSION =z"], ("z",)),
    ("empty_value_kept_for_the_verifier", ["SESSION="], ("",)),
]


@pytest.mark.parametrize(("lines", "expected"), [c[1:] for c in SESSION_COOKIES], ids=[c[0] for c in SESSION_COOKIES])
def test_inspect_finds_session_cookies_across_cookie_lines_in_order(
    lines: list[str], expected: tuple[str, ...]
) -> None:
    headers = [("accept", "*/*")]
    for line in lines:
        headers += [("cookie", line), ("x-other", "1")]
    inspection = inspect(SETTINGS, _request("/app", *headers))
    assert inspection.session_cookies == inspection.values(("SESSION",)) == expected


@pytest.mark.parametrize(
    ("path", "route"),
    [("/admin/x", ADMIN), ("/public", PUBLIC), ("/app", DEFAULT_ROUTE), ("/public/../admin", ADMIN)],
    ids=["admin", "public", "default", "dot_dot"],
)
def test_inspect_matches_the_route_of_the_path(path: str, route: Route) -> None:
    assert inspect(SETTINGS, _request(path)).route == route


# --------------------------------------------------------------------------------------------------------
# inspect: spoofable headers
# --------------------------------------------------------------------------------------------------------

SPOOFABLE: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("none", ["accept", "cookie", "host"], ()),
    ("one", ["x-user-id"], ("x-user-id",)),
    ("duplicated_once_each", ["x-user-id", "x-user-id", "x-user-id"], ("x-user-id",)),
    (
        "mixed_duplicates_in_first_seen_order",
        ["x-session-id", "x-user-id", "accept", "x-session-id", "x-user-roles", "x-user-id"],
        ("x-session-id", "x-user-id", "x-user-roles"),
    ),
    ("any_name_under_a_prefix", ["x-user-anything", "x-session-extra"], ("x-user-anything", "x-session-extra")),
    ("bare_prefix", ["x-user-"], ("x-user-",)),
    ("lookalikes_are_not_spoofable", ["x-userid", "x-user", "x-sessionid", "user-id", "xx-user-id"], ()),
]


@pytest.mark.parametrize(("names", "expected"), [c[1:] for c in SPOOFABLE], ids=[c[0] for c in SPOOFABLE])
def test_inspect_collects_spoofable_headers_once_each(names: list[str], expected: tuple[str, ...]) -> None:
    request = _request("/app", *[(name, f"v{i}") for i, name in enumerate(names)])
    assert inspect(SETTINGS, request).spoofable_headers == expected


# --------------------------------------------------------------------------------------------------------
# inspect: cookie rewrite for the upstream
# --------------------------------------------------------------------------------------------------------

COOKIE_REWRITE: list[tuple[str, EdgeSettings, list[str], str | None, bool]] = [
    ("keeps_other_cookies", SETTINGS, ["a=1; SESSION=t; b=2"], "a=1; b=2", True),
    ("keeps_other_cookies_across_lines", SETTINGS, ["a=1", "SESSION=t", "b=2; SESSION=u"], "a=1; b=2", True),
    ("only_session_cookie_removes_header", SETTINGS, ["SESSION=t"], None, True),
    ("only_session_cookies_on_several_lines", SETTINGS, ["SESSION=t", " SESSION=u ;"], None, True),
    ("no_session_cookie_no_change", SETTINGS, ["a=1; b=2"], None, False),
    ("no_cookie_header_no_change", SETTINGS, [], None, False),
    ("strip_upstream_off_no_change", NO_STRIP, ["a=1; SESSION=t"], None, False),
    ("strip_upstream_off_only_session_no_change", NO_STRIP, ["SESSION=t"], None, False),
]


@pytest.mark.parametrize(
    ("settings", "lines", "header", "changed"), [c[1:] for c in COOKIE_REWRITE], ids=[c[0] for c in COOKIE_REWRITE]
)
def test_inspect_cookie_rewrite(settings: EdgeSettings, lines: list[str], header: str | None, changed: bool) -> None:
    inspection = inspect(settings, _request("/app", *[("cookie", line) for line in lines]))
    assert inspection.cookie_header == header
    assert inspection.cookie_changed is changed


# --------------------------------------------------------------------------------------------------------
# allow
# --------------------------------------------------------------------------------------------------------

ID_SET = ("x-user-id", "u1")
EMAIL_SET = ("x-user-email", "u1@example.com")
ROLES_SET = ("x-user-roles", "admin,dev")
SID_SET = ("x-session-id", "sid-1")

ALLOW: list[tuple[str, SessionRecord, list[tuple[str, str]], EdgeSettings, list[tuple[str, str]], list[str]]] = [
    (
        "full_identity_session_cookie_only",
        FULL,
        [("cookie", f"SESSION={V1}")],
        SETTINGS,
        [ID_SET, EMAIL_SET, ROLES_SET, SID_SET],
        ["cookie"],
    ),
    (
        "full_identity_keeps_other_cookies",
        FULL,
        [("cookie", f"a=1; SESSION={V1}; b=2")],
        SETTINGS,
        [ID_SET, EMAIL_SET, ROLES_SET, SID_SET, ("cookie", "a=1; b=2")],
        [],
    ),
    (
        "strip_upstream_off_leaves_cookie_alone",
        FULL,
        [("cookie", f"a=1; SESSION={V1}")],
        NO_STRIP,
        [ID_SET, EMAIL_SET, ROLES_SET, SID_SET],
        [],
    ),
    ("no_email_omits_email", NO_EMAIL, [], SETTINGS, [ID_SET, ROLES_SET, SID_SET], []),
    ("no_roles_omits_roles", NO_ROLES, [], SETTINGS, [ID_SET, EMAIL_SET, SID_SET], []),
    ("bare_identity", BARE, [], SETTINGS, [ID_SET, SID_SET], []),
    (
        "client_email_removed_when_session_has_none",
        NO_EMAIL,
        [("x-user-email", "ceo@example.com")],
        SETTINGS,
        [ID_SET, ROLES_SET, SID_SET],
        ["x-user-email"],
    ),
    (
        "client_roles_removed_when_session_has_none",
        BARE,
        [("x-user-roles", "admin"), ("x-user-email", "x@y"), ("x-user-roles", "root")],
        SETTINGS,
        [ID_SET, SID_SET],
        ["x-user-roles", "x-user-email"],
    ),
    (
        "client_identity_overwritten_not_removed",
        FULL,
        [("x-user-id", "admin"), ("x-user-id", "root"), ("x-user-roles", "admin"), ("x-session-id", "s")],
        SETTINGS,
        [ID_SET, EMAIL_SET, ROLES_SET, SID_SET],
        [],
    ),
    (
        "extra_prefixed_headers_removed_once",
        FULL,
        [("x-user-groups", "g"), ("x-session-extra", "e"), ("x-user-groups", "h"), ("x-user-id", "evil")],
        SETTINGS,
        [ID_SET, EMAIL_SET, ROLES_SET, SID_SET],
        ["x-user-groups", "x-session-extra"],
    ),
    (
        "everything_at_once",
        NO_EMAIL,
        [
            ("cookie", f"SESSION={V1}"),
            ("x-user-email", "ceo@example.com"),
            ("x-user-id", "admin"),
            ("x-user-tenant", "t"),
            ("x-user-email", "cfo@example.com"),
        ],
        SETTINGS,
        [ID_SET, ROLES_SET, SID_SET],
        ["cookie", "x-user-email", "x-user-tenant"],
    ),
]


@pytest.mark.parametrize(
    ("record", "headers", "settings", "expected_set", "expected_remove"),
    [c[1:] for c in ALLOW],
    ids=[c[0] for c in ALLOW],
)
def test_allow_sets_identity_and_removes_spoofed_headers(
    record: SessionRecord,
    headers: list[tuple[str, str]],
    settings: EdgeSettings,
    expected_set: list[tuple[str, str]],
    expected_remove: list[str],
) -> None:
    request = _request("/app", *headers)
    result = _assert_disjoint(allow(settings, inspect(settings, request), record))
    assert sorted(result.headers_to_set) == sorted(expected_set)
    # the spoofed ones, and every configured identity name the allow does not set (whether sent or not)
    unset = [name for name in settings.identity_names if name not in dict(expected_set)]
    assert sorted(result.headers_to_remove) == sorted(dict.fromkeys([*expected_remove, *unset]))
    assert result.user_id == record.user_id
    assert result.session_id == record.session_id
    # decide() on a route the session may use gives the same answer
    assert decide(settings, request, inspect(settings, request), _found(record)) == result


def test_allow_sets_identity_headers_in_a_stable_order() -> None:
    result = allow(SETTINGS, inspect(SETTINGS, _request("/app")), FULL)
    assert result.headers_to_set == (ID_SET, EMAIL_SET, ROLES_SET, SID_SET)


SPOOFED = [
    ("x-user-id", "admin"),
    ("x-user-email", "ceo@example.com"),
    ("x-user-roles", "admin"),
    ("x-session-id", "s"),
    ("x-user-id", "root"),
]


@pytest.mark.parametrize("store_failed", [False, True], ids=["store_ok", "store_failed"])
def test_anonymous_allow_on_public_route_sets_nothing_and_removes_spoofed_headers(store_failed: bool) -> None:
    request = _request("/public/page", ("accept", CHROME_ACCEPT), *SPOOFED)
    inspection = inspect(WITH_LOGIN, request)
    found = Found(Reason.STORE_UNAVAILABLE) if store_failed else NO_SESSION
    result = _assert_disjoint(decide(WITH_LOGIN, request, inspection, found))
    assert result.headers_to_set == ()
    assert result.headers_to_remove == ("x-user-id", "x-user-email", "x-user-roles", "x-session-id")
    assert result.user_id is None
    assert result.session_id is None


def test_anonymous_allow_on_public_route_still_strips_an_unresolved_session_cookie() -> None:
    request = _request("/public", ("cookie", f"SESSION={FORGED}; theme=dark"), ("x-user-id", "admin"))
    result = _assert_disjoint(decide(SETTINGS, request, inspect(SETTINGS, request), NO_SESSION))
    assert result.headers_to_set == (("cookie", "theme=dark"),)
    assert result.headers_to_remove == ("x-user-id", "x-user-email", "x-user-roles", "x-session-id")


@pytest.mark.parametrize("name", ["x_user_id", "x_user_email", "x_session_whatever", "X_USER_ROLES"])
def test_underscore_spellings_of_the_identity_prefixes_are_removed_too(name: str) -> None:
    request = _request("/app", (name.lower(), "mallory"))
    result = _assert_disjoint(decide(SETTINGS, request, inspect(SETTINGS, request), _found(FULL)))
    assert name.lower() in result.headers_to_remove


def test_every_allow_removes_the_configured_identity_names_it_does_not_set_even_unsent() -> None:
    # Envoy's allowed_headers may keep a client's X-User-Id from the sidecar: it is named for removal anyway.
    settings = replace(SETTINGS, user_id_header="x-principal", assertion_header="x-assertion")
    public = decide(settings, _request("/public/x"), inspect(settings, _request("/public/x")), NO_SESSION)
    assert isinstance(public, Allow)
    assert public.headers_to_remove == ("x-principal", "x-user-email", "x-user-roles", "x-session-id", "x-assertion")
    request = _request("/app")
    session = _assert_disjoint(decide(settings, request, inspect(settings, request), _found(FULL)))
    assert ("x-principal", FULL.user_id) in session.headers_to_set
    assert session.headers_to_remove == ("x-assertion",)  # the assertion is not signed here: never let one through


def test_allow_reason_says_whether_a_session_or_a_public_route_let_it_through() -> None:
    request = _request("/public/x")
    inspection = inspect(SETTINGS, request)
    assert _assert_disjoint(decide(SETTINGS, request, inspection, _found(FULL))).reason == "session"
    assert _assert_disjoint(decide(SETTINGS, request, inspection, NO_SESSION)).reason == "public"
    assert _assert_disjoint(decide(SETTINGS, request, inspection, NO_SESSION)).status == 200


def test_header_bytes_counts_wire_lines_including_non_utf8_bytes() -> None:
    assert header_bytes([("x-user-id", "abc")]) == len("x-user-id: abc\r\n")
    assert header_bytes([("a", b"\xff".decode("utf-8", "surrogateescape"))]) == 1 + 1 + 4


def test_extra_headers_are_set_with_the_identity_and_never_removed() -> None:
    request = _request("/app", ("x-user-assertion", "replayed"))
    extra = (("x-user-assertion", "jwt"),)
    result = _assert_disjoint(decide(SETTINGS, request, inspect(SETTINGS, request), _found(FULL), extra=extra))
    assert ("x-user-assertion", "jwt") in result.headers_to_set
    assert "x-user-assertion" not in result.headers_to_remove


def test_identity_headers_over_the_budget_are_a_403_naming_the_reason() -> None:
    request = _request("/app")
    inspection = inspect(SETTINGS, request)
    exact = header_bytes(_assert_disjoint(decide(SETTINGS, request, inspection, _found(FULL))).headers_to_set)
    fits = replace(SETTINGS, max_header_bytes=exact)
    assert isinstance(decide(fits, request, inspection, _found(FULL)), Allow)
    over = decide(replace(SETTINGS, max_header_bytes=exact - 1), request, inspection, _found(FULL))
    assert isinstance(over, Deny) and (over.status, over.reason) == (403, "identity_too_large")
    assert _json_body(over) == {"error": "forbidden", "reason": "identity_too_large"}
    with_extra = decide(fits, request, inspection, _found(FULL), extra=(("x-user-assertion", "j"),))
    assert isinstance(with_extra, Deny)


def test_public_route_with_a_session_injects_its_identity() -> None:
    request = _request("/public/x", ("cookie", f"SESSION={V1}"), ("x-user-id", "spoof"))
    result = _assert_disjoint(decide(SETTINGS, request, inspect(SETTINGS, request), _found(FULL)))
    assert ID_SET in result.headers_to_set
    assert "x-user-id" not in result.headers_to_remove
    assert result.user_id == "u1"


# --------------------------------------------------------------------------------------------------------
# decide: denials
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "record"),
    [("/admin", DEV_ONLY), ("/admin/users?x=1", NO_ROLES), ("/%61dmin", DEV_ONLY), ("/public/../admin", BARE)],
    ids=["admin_without_role", "admin_child_without_roles", "encoded_admin", "dot_dot_admin"],
)
def test_decide_missing_roles_is_403_naming_them(path: str, record: SessionRecord) -> None:
    request = _request(path, ("sec-fetch-mode", "navigate"))
    result = decide(WITH_LOGIN, request, inspect(WITH_LOGIN, request), _found(record))
    assert isinstance(result, Deny)
    assert result.status == 403, "never a login redirect: the user is already authenticated"
    body = _json_body(result)
    assert body["error"] == "forbidden"
    assert "admin" in body["reason"]
    assert "admin" in result.reason


def test_decide_session_with_required_role_is_allowed() -> None:
    request = _request("/admin/users")
    _assert_disjoint(decide(SETTINGS, request, inspect(SETTINGS, request), _found(FULL)))


@pytest.mark.parametrize("path", ["/app", "/admin", "/", "/publicity"], ids=["default", "admin", "root", "lookalike"])
@pytest.mark.parametrize("settings", [SETTINGS, WITH_LOGIN], ids=["no_login_url", "login_url"])
def test_decide_store_failure_is_503_without_identity_on_non_public_routes(path: str, settings: EdgeSettings) -> None:
    request = _request(path, ("sec-fetch-mode", "navigate"), ("x-user-id", "spoof"))
    result = decide(settings, request, inspect(settings, request), Found(Reason.STORE_UNAVAILABLE))
    assert isinstance(result, Deny)
    assert result.status == 503
    assert _json_body(result)["error"] == "unavailable"
    assert not any(name in IDENTITY_NAMES for name, _ in result.headers)


@pytest.mark.parametrize(
    ("found", "reason", "path"),
    [
        (NO_SESSION, "session_required", "/app"),
        (Found(Reason.FORGED), "session_invalid", "/admin"),
        (Found(Reason.UNKNOWN), "session_invalid", "/"),
        (Found(Reason.RECORD_CORRUPT), "session_invalid", "/app"),
        (Found(Reason.RECORD_TOO_LARGE), "session_record_too_large", "/app"),
    ],
    ids=["no_session", "forged", "unknown", "record_corrupt", "record_too_large"],
)
def test_decide_without_session_is_401_json_with_www_authenticate(found: Found, reason: str, path: str) -> None:
    request = _request(path, ("accept", "application/json"), ("cookie", f"SESSION={V1}"))
    result = decide(SETTINGS, request, inspect(SETTINGS, request), found)
    assert isinstance(result, Deny)
    assert result.status == 401
    body = _json_body(result)
    assert body["error"] == "unauthenticated"
    assert body["reason"] == reason
    assert result.reason == reason
    challenges = [value for name, value in result.headers if name == "www-authenticate"]
    assert len(challenges) == 1
    assert "SESSION" in challenges[0]
    assert V1 not in result.body.decode()


# --------------------------------------------------------------------------------------------------------
# decide: login redirect for browser navigations
# --------------------------------------------------------------------------------------------------------

REDIRECTS: list[tuple[str, str, RequestView, str]] = [
    (
        "navigate_with_query",
        LOGIN,
        _request("/app/page?x=1&y=%2F", ("sec-fetch-mode", "navigate")),
        "https://login.example/login?rd=https%3A%2F%2Fapp.example%2Fapp%2Fpage%3Fx%3D1%26y%3D%252F",
    ),
    (
        "html_accept_without_fetch_metadata",
        LOGIN,
        _request("/app", ("accept", CHROME_ACCEPT)),
        "https://login.example/login?rd=https%3A%2F%2Fapp.example%2Fapp",
    ),
    (
        "cors_with_html_accept",
        LOGIN,
        _request("/", ("sec-fetch-mode", "cors"), ("accept", "text/html")),
        "https://login.example/login?rd=https%3A%2F%2Fapp.example%2F",
    ),
    (
        "login_url_with_query_uses_ampersand",
        "https://login.example/login?client=app",
        _request("/app?a=b", ("sec-fetch-mode", "navigate")),
        "https://login.example/login?client=app&rd=https%3A%2F%2Fapp.example%2Fapp%3Fa%3Db",
    ),
    (
        "http_scheme_and_port",
        "/login",
        _request("/admin/x", ("sec-fetch-mode", "navigate"), scheme="http", host="app.example:8080"),
        "/login?rd=http%3A%2F%2Fapp.example%3A8080%2Fadmin%2Fx",
    ),
    (
        "fragment_chars_and_spaces_encoded",
        LOGIN,
        _request("/a%20b?q=a+b&r=%23x", ("sec-fetch-mode", "navigate")),
        "https://login.example/login?rd=https%3A%2F%2Fapp.example%2Fa%2520b%3Fq%3Da%2Bb%26r%3D%2523x",
    ),
]


@pytest.mark.parametrize(
    ("login_url", "request_view", "location"), [c[1:] for c in REDIRECTS], ids=[c[0] for c in REDIRECTS]
)
def test_decide_navigation_without_session_redirects_to_login_with_rd(
    login_url: str, request_view: RequestView, location: str
) -> None:
    settings = replace(SETTINGS, login_url=login_url)
    result = decide(settings, request_view, inspect(settings, request_view), NO_SESSION)
    assert isinstance(result, Deny)
    assert result.status == 302
    locations = [value for name, value in result.headers if name == "location"]
    assert locations == [location]
    original = f"{request_view.scheme}://{request_view.host}{request_view.path}"
    assert parse_qs(urlsplit(location).query)["rd"] == [original]


NOT_REDIRECTED: list[tuple[str, EdgeSettings, list[tuple[str, str]]]] = [
    ("api_json", WITH_LOGIN, [("accept", "application/json"), ("sec-fetch-mode", "cors")]),
    ("api_wildcard", WITH_LOGIN, [("accept", "*/*")]),
    ("api_no_headers", WITH_LOGIN, []),
    ("html_not_preferred", WITH_LOGIN, [("accept", "application/json, text/html;q=0.5")]),
    ("navigation_without_login_url", SETTINGS, [("sec-fetch-mode", "navigate"), ("accept", CHROME_ACCEPT)]),
    ("html_accept_without_login_url", SETTINGS, [("accept", CHROME_ACCEPT)]),
]


@pytest.mark.parametrize(("settings", "headers"), [c[1:] for c in NOT_REDIRECTED], ids=[c[0] for c in NOT_REDIRECTED])
def test_decide_api_request_or_no_login_url_gets_401(settings: EdgeSettings, headers: list[tuple[str, str]]) -> None:
    request = _request("/app", *headers)
    result = decide(settings, request, inspect(settings, request), NO_SESSION)
    assert isinstance(result, Deny)
    assert result.status == 401
    assert _json_body(result)["error"] == "unauthenticated"
    assert any(name == "www-authenticate" for name, _ in result.headers)
    assert not any(name == "location" for name, _ in result.headers)


def test_decide_uses_the_inspection_route() -> None:
    request = _request("/admin")
    inspection = Inspection(
        route=PUBLIC,
        session_cookies=(),
        spoofable_headers=(),
        cookie_header=None,
        cookie_changed=False,
    )
    assert isinstance(decide(SETTINGS, request, inspection, NO_SESSION), Allow)


def test_a_browser_navigation_to_a_non_utf8_path_is_redirected_with_its_bytes_percent_encoded() -> None:
    path = b"/caf\xe9?q=\xff".decode("utf-8", "surrogateescape")
    request = _request(path, ("accept", CHROME_ACCEPT))
    decision = decide(WITH_LOGIN, request, inspect(WITH_LOGIN, request), NO_SESSION)
    assert isinstance(decision, Deny) and decision.status == 302
    location = dict(decision.headers)["location"]
    assert location.endswith("rd=https%3A%2F%2Fapp.example%2Fcaf%E9%3Fq%3D%FF")


# --------------------------------------------------------------------------------------------------------
# what the lookup found
# --------------------------------------------------------------------------------------------------------


def test_found_carries_a_record_exactly_for_a_session_or_its_last_known_identity() -> None:
    assert Found(Reason.STALE, FULL).record is FULL
    with pytest.raises(ValueError, match="STALE needs"):
        Found(Reason.STALE)
    with pytest.raises(ValueError, match="UNKNOWN takes no"):
        Found(Reason.UNKNOWN, FULL)


def test_a_last_known_identity_is_allowed_as_stale_and_still_needs_the_routes_roles() -> None:
    request = _request("/admin/x", ("x-user-id", "spoof"))
    stale = _assert_disjoint(decide(SETTINGS, request, inspect(SETTINGS, request), Found(Reason.STALE, FULL)))
    assert stale.reason == "stale" and stale.user_id == "u1" and ("x-user-id", "u1") in stale.headers_to_set
    denied = decide(SETTINGS, request, inspect(SETTINGS, request), Found(Reason.STALE, DEV_ONLY))
    assert isinstance(denied, Deny) and denied.reason == "missing_roles:admin"


def test_a_forwarded_conflict_is_denied_whatever_the_lookup_found() -> None:
    request = replace(_request("/public/x"), conflict="host")
    for found in (_found(FULL), NO_SESSION, Found(Reason.STORE_UNAVAILABLE)):
        result = decide(SETTINGS, request, inspect(SETTINGS, request), found)
        assert isinstance(result, Deny) and (result.status, result.reason) == (403, "forwarded_conflict")


# --------------------------------------------------------------------------------------------------------
# several sources' cookies
# --------------------------------------------------------------------------------------------------------

TWO_SOURCES = replace(SETTINGS, cookie_names=("SESSION", "connect.sid"))


def test_cookie_names_default_to_the_cookie_name() -> None:
    assert SETTINGS.cookie_names == ("SESSION",)


def test_inspect_collects_every_sources_cookie_in_header_order_and_strips_them_all() -> None:
    request = _request("/app", ("cookie", "connect.sid=e1; a=1; SESSION=t1"), ("cookie", "connect.sid=e2; b=2"))
    inspection = inspect(TWO_SOURCES, request)
    assert inspection.session_cookies == ("e1", "t1", "e2")
    assert inspection.session_cookie_names == ("connect.sid", "SESSION", "connect.sid")
    assert inspection.values(("connect.sid",)) == ("e1", "e2")
    assert inspection.values(("SESSION",)) == ("t1",)
    assert (inspection.cookie_header, inspection.cookie_changed) == ("a=1; b=2", True)
    only_sessions = inspect(TWO_SOURCES, _request("/app", ("cookie", "SESSION=t; connect.sid=e")))
    assert (only_sessions.cookie_header, only_sessions.cookie_changed) == (None, True)


def test_nothing_looked_up_is_decided_as_no_session() -> None:
    request = _request("/app", ("accept", "application/json"))
    assert decide(SETTINGS, request, inspect(SETTINGS, request)) == decide(
        SETTINGS, request, inspect(SETTINGS, request), NO_SESSION
    )


def test_an_allow_is_built_once_per_identity_and_request_shape_and_rebuilt_when_either_changes() -> None:
    settings = replace(SETTINGS)  # its own memo
    cookie = ("cookie", f"SESSION={V1}; theme=dark")

    def decided(record: SessionRecord, *headers: tuple[str, str]) -> Decision:
        request = _request("/app", *headers)
        return decide(settings, request, inspect(settings, request), _found(record))

    first = decided(FULL, cookie)
    assert decided(FULL, cookie) is first  # the same session, the same request shape: looked up
    renamed = decided(_session(email="new@example.com"), cookie)
    assert isinstance(renamed, Allow) and renamed is not first
    assert ("x-user-email", "new@example.com") in renamed.headers_to_set
    spoofed = decided(FULL, cookie, ("x-user-admin", "1"))
    assert isinstance(spoofed, Allow) and "x-user-admin" in spoofed.headers_to_remove
    other_cookies = decided(FULL, ("cookie", f"SESSION={V1}; theme=light"))
    assert isinstance(other_cookies, Allow) and ("cookie", "theme=light") in other_cookies.headers_to_set
    fresh = replace(SETTINGS)
    assert decide(fresh, _request("/app", cookie), inspect(fresh, _request("/app", cookie)), _found(FULL)) == first


def test_the_allow_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decision_module, "MAX_MEMOIZED_ALLOWS", 3)
    settings = replace(SETTINGS)
    for i in range(10):
        request = _request("/app", ("cookie", f"SESSION={V1}"))
        decide(settings, request, inspect(settings, request), _found(_session(session_id=f"sid-{i}")))
        assert len(settings.allows) <= 3


def test_an_allow_whose_client_chosen_parts_are_large_is_not_kept() -> None:
    settings = replace(SETTINGS)
    spoofed = tuple((f"x-user-{i:03d}", "1") for i in range(200))  # about 2.4 KB of header names
    request = _request("/app", ("cookie", f"SESSION={V1}"), *spoofed)
    first = decide(settings, request, inspect(settings, request), _found(FULL))
    again = decide(settings, request, inspect(settings, request), _found(FULL))
    assert isinstance(first, Allow) and first == again and first is not again
    assert not settings.allows
