"""An HTTP/1.1 request as parsed → the RequestView the core decides on (pure)."""

from __future__ import annotations

from sidecar.authz.forwarded import DEFAULT_TRUST, ForwardedTrust
from sidecar.authz.http_request import HEADER_NAMES, asks_forward_auth, request_view


def test_the_common_header_names_are_lower_cased_in_every_spelling_proxies_use() -> None:
    for name in ("host", "cookie", "x-forwarded-uri", "x-original-method", "x-forwarded-for", "sec-fetch-mode"):
        for spelling in (name, name.title(), name.upper()):
            assert HEADER_NAMES[spelling.encode()] == name
    assert all(name == name.lower() for name in HEADER_NAMES.values())


def test_the_headers_reach_the_view_in_order_with_duplicates_and_the_request_line_read_as_latin1() -> None:
    headers = [("host", "app"), ("x-user-id", "a"), ("x-user-id", "b"), ("cookie", "A=1")]
    view = request_view(DEFAULT_TRUST, b"GET", b"/caf\xe9?y=1", headers, "10.0.0.1")
    assert view.headers == tuple(headers)
    assert (view.method, view.host, view.path, view.source) == ("GET", "app", "/caf\u00e9?y=1", "10.0.0.1")


def test_the_request_line_is_the_request_except_on_forward_auth() -> None:
    raw = [("x-forwarded-uri", "/public/page"), ("x-forwarded-method", "POST")]
    envoy = request_view(DEFAULT_TRUST, b"GET", b"/hello", raw, "")
    assert (envoy.method, envoy.path) == ("GET", "/hello")
    proxied = request_view(DEFAULT_TRUST, b"GET", b"/forward-auth", raw, "")
    assert (proxied.method, proxied.path) == ("POST", "/public/page")


def test_forward_auth_is_only_its_path_with_or_without_a_query_and_never_behind_envoy() -> None:
    assert asks_forward_auth(b"/forward-auth", DEFAULT_TRUST)
    assert asks_forward_auth(b"/forward-auth?x=1", DEFAULT_TRUST)
    for target in (b"/forward-authz", b"/forward-auth/x", b"/hello", b"/"):
        assert not asks_forward_auth(target, DEFAULT_TRUST)
    assert not asks_forward_auth(b"/forward-auth", ForwardedTrust(proxy="envoy"))
