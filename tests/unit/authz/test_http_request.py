"""An HTTP/1.1 request as parsed → the RequestView the core decides on (pure)."""

from __future__ import annotations

from sidecar.authz.forwarded import DEFAULT_TRUST, ForwardedTrust
from sidecar.authz.http_request import asks_forward_auth, request_view


def test_header_names_are_lower_cased_in_any_spelling_and_every_line_kept_in_order() -> None:
    raw = [(b"Host", b"app"), (b"X-USER-ID", b"a"), (b"x-uSeR-iD", b"b"), (b"Cookie", b"A=1"), (b"X-Odd-Name", b"z")]
    view = request_view(DEFAULT_TRUST, b"GET", b"/x?y=1", raw, "10.0.0.1")
    assert view.headers == (
        ("host", "app"),
        ("x-user-id", "a"),
        ("x-user-id", "b"),
        ("cookie", "A=1"),
        ("x-odd-name", "z"),
    )
    assert (view.method, view.host, view.path, view.source) == ("GET", "app", "/x?y=1", "10.0.0.1")


def test_header_values_that_are_not_utf8_stay_byte_exact() -> None:
    view = request_view(DEFAULT_TRUST, b"GET", b"/", [(b"cookie", b"a=\xff\xfe; b=caf\xc3\xa9")], "")
    value = view.first("cookie")
    assert value is not None and value.encode("utf-8", "surrogateescape") == b"a=\xff\xfe; b=caf\xc3\xa9"


def test_the_request_line_is_the_request_except_on_forward_auth() -> None:
    raw = [(b"X-Forwarded-Uri", b"/public/page"), (b"X-Forwarded-Method", b"POST")]
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
