"""What /forward-auth reads as the original request, and from whom: sidecar.authz.forwarded."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar.authz.forwarded import (
    FORWARDED_NAMES,
    MAX_URIS,
    ForwardedTrust,
    client_address,
    is_forward_auth,
    to_request_view,
)
from sidecar.core.decision import Allow, Deny, decide, inspect
from sidecar.core.policy import Route, RoutePolicy
from sidecar.core.request import RequestView
from tests.support.edge import SETTINGS

NGINX = ForwardedTrust(proxy="nginx")
TRAEFIK = ForwardedTrust(proxy="traefik")
INGRESS = ForwardedTrust(proxy="ingress-nginx")
ENVOY = ForwardedTrust(proxy="envoy")
ANY = ForwardedTrust()


def view(target: str, *headers: tuple[str, str], method: str = "GET", trust: ForwardedTrust = ANY) -> RequestView:
    return to_request_view(method, target, tuple(headers), "10.1.2.3", trust)


# --------------------------------------------------------------------------------------------------- translation


def test_envoy_mode_reads_the_request_line_and_host() -> None:
    headers = (("host", "app.example.com"), ("x-forwarded-proto", "https"), ("cookie", "a=1"))
    seen = to_request_view("POST", "/hello?q=1", headers)
    assert (seen.method, seen.scheme, seen.host, seen.path) == ("POST", "https", "app.example.com", "/hello?q=1")
    assert seen.headers == headers


def test_scheme_defaults_to_http_and_takes_the_first_forwarded_proto() -> None:
    assert view("/", ("host", "h")).scheme == "http"
    assert view("/", ("x-forwarded-proto", "https, http")).scheme == "https"
    assert view("/", ("x-forwarded-proto", "")).scheme == "http"


@pytest.mark.parametrize("target", ["/hello", "/public/x", "/forward-auth/x", "/forward-authz", "/x/forward-auth"])
def test_forwarded_headers_are_ignored_off_the_forward_auth_path(target: str) -> None:
    seen = view(
        target,
        ("host", "real.example.com"),
        ("x-forwarded-uri", "/public/borrowed"),
        ("x-original-uri", "/public/borrowed"),
        ("x-original-url", "https://real.example.com/public/borrowed"),
        ("x-forwarded-method", "OPTIONS"),
        ("x-forwarded-host", "spoofed.example.com"),
    )
    assert (seen.method, seen.host, seen.path) == ("GET", "real.example.com", target)


@pytest.mark.parametrize(
    ("original_url", "path"),
    [
        ("https://app.example.com/admin/x?y=1", "/admin/x?y=1"),
        ("http://app.example.com", "/"),
        ("/relative/path", "/relative/path"),
    ],
)
def test_ingress_nginx_original_url_names_the_original_path_on_forward_auth(original_url: str, path: str) -> None:
    assert view("/forward-auth", ("x-original-url", original_url)).path == path


@pytest.mark.parametrize("target", ["/forward-auth", "/forward-auth?x=1"])
def test_traefik_forward_auth_headers_describe_the_original_request(target: str) -> None:
    seen = view(
        target,
        ("host", "sidecar:9192"),
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.example.com, proxy.internal"),
        ("x-forwarded-uri", "/public/page?a=1"),
    )
    assert (seen.method, seen.scheme, seen.host, seen.path) == (
        "DELETE",
        "https",
        "app.example.com",
        "/public/page?a=1",
    )


def test_nginx_original_headers_describe_the_original_request() -> None:
    seen = view(
        "/forward-auth",
        ("host", "app.example.com"),
        ("x-original-uri", "/admin/x"),
        ("x-original-method", "PUT"),
    )
    assert (seen.method, seen.scheme, seen.host, seen.path) == ("PUT", "http", "app.example.com", "/admin/x")


def test_forwarded_uris_that_disagree_are_all_kept_for_the_policy() -> None:
    seen = view("/forward-auth", ("x-original-uri", "/nginx"), ("x-forwarded-uri", "/traefik"))
    assert (seen.path, seen.alternates, seen.conflict) == ("/nginx", ("/traefik",), "")


def test_forward_auth_without_forwarded_headers_is_the_request_itself() -> None:
    seen = view("/forward-auth", ("host", "h"))
    assert (seen.method, seen.host, seen.path) == ("GET", "h", "/forward-auth")


# --------------------------------------------------------------------------------------------------- agreement

# What each proxy sets on its auth request (the README recipes), and the client header the issue found it passes on.
NGINX_SETS = (("x-original-uri", "/admin/secret"), ("x-original-method", "GET"), ("x-forwarded-host", "app"))
TRAEFIK_SETS = (("x-forwarded-uri", "/admin/secret"), ("x-forwarded-method", "GET"), ("x-forwarded-host", "app"))
INGRESS_SETS = (("x-original-url", "https://app/admin/secret"), ("x-original-method", "GET"))
SPOOFS = {
    "nginx": ("x-forwarded-uri", "/public/x"),
    "traefik": ("x-original-uri", "/public/x"),
    "ingress-nginx": ("x-forwarded-uri", "/public/x"),
}
PROXY_SETS = {"nginx": NGINX_SETS, "traefik": TRAEFIK_SETS, "ingress-nginx": INGRESS_SETS}
POLICY = RoutePolicy.of([Route("/public", public=True), Route("/admin", roles=("admin",))])
EDGE = dataclasses.replace(SETTINGS, policy=POLICY)


@pytest.mark.parametrize("proxy", sorted(PROXY_SETS))
@pytest.mark.parametrize("before", [True, False], ids=["spoof_first", "spoof_last"])
def test_a_client_uri_header_cannot_make_a_protected_path_public_behind_any_proxy(proxy: str, before: bool) -> None:
    sets, spoof = PROXY_SETS[proxy], SPOOFS[proxy]
    headers = (spoof, *sets) if before else (*sets, spoof)
    seen = view("/forward-auth", *headers)  # proxy "any": every known header set is read
    decision = decide(EDGE, seen, inspect(EDGE, seen), None)
    assert isinstance(decision, Deny) and decision.status == 401
    assert inspect(EDGE, seen).route.roles == ("admin",)  # a session without the admin role gets 403


@pytest.mark.parametrize("proxy", sorted(PROXY_SETS))
def test_a_narrowed_proxy_setting_ignores_the_headers_that_proxy_never_sets(proxy: str) -> None:
    seen = view("/forward-auth", SPOOFS[proxy], *PROXY_SETS[proxy], trust=ForwardedTrust(proxy=proxy))
    assert (seen.path, seen.alternates, seen.conflict) == ("/admin/secret", (), "")


def test_several_distinct_uris_give_the_strictest_rule_and_the_first_is_the_path() -> None:
    seen = view("/forward-auth", ("x-forwarded-uri", "/public/a"), ("x-forwarded-uri", "/public/b"))
    assert (seen.path, seen.alternates) == ("/public/a", ("/public/b",))
    assert inspect(EDGE, seen).route.public
    mixed = view("/forward-auth", ("x-forwarded-uri", "/public/a"), ("x-original-uri", "/other"))
    assert not inspect(EDGE, mixed).route.public


def test_repeated_equal_uris_are_one() -> None:
    seen = view("/forward-auth", ("x-original-uri", "/a"), ("x-forwarded-uri", "/a"), ("x-original-url", "http://h/a"))
    assert (seen.path, seen.alternates, seen.conflict) == ("/a", (), "")


def test_more_distinct_uris_than_the_bound_is_a_conflict() -> None:
    uris = [("x-forwarded-uri", f"/public/{i}") for i in range(MAX_URIS + 1)]
    assert view("/forward-auth", *uris).conflict == "uri"
    assert view("/forward-auth", *uris[:MAX_URIS]).conflict == ""


@pytest.mark.parametrize(
    ("headers", "kinds"),
    [
        ((("x-original-method", "GET"), ("x-forwarded-method", "POST")), "method"),
        ((("x-forwarded-host", "a.example"), ("x-forwarded-host", "b.example")), "host"),
        ((("x-forwarded-host", "a.example"), ("x-original-url", "https://b.example/x")), "host"),
        ((("x-forwarded-proto", "https"), ("x-original-url", "http://a/x")), "scheme"),
        ((("x-original-url", "not a url"),), "uri"),
        (
            (
                ("x-forwarded-method", "GET"),
                ("x-original-method", "PUT"),
                ("x-forwarded-host", "a"),
                ("x-forwarded-host", "b"),
            ),
            "method,host",
        ),
    ],
)
def test_method_host_or_scheme_headers_that_disagree_are_a_conflict(
    headers: tuple[tuple[str, str], ...], kinds: str
) -> None:
    seen = view("/forward-auth", ("x-forwarded-uri", "/public/x"), *headers)
    assert seen.conflict == kinds
    decision = decide(EDGE, seen, inspect(EDGE, seen), None)
    assert isinstance(decision, Deny) and (decision.status, decision.reason) == (403, "forwarded_conflict")


def test_a_conflicting_request_never_looks_up_its_session_cookie() -> None:
    seen = view("/forward-auth", ("x-forwarded-method", "GET"), ("x-original-method", "PUT"), ("cookie", "SESSION=t"))
    assert inspect(EDGE, seen).session_cookies == ()


def test_hosts_and_schemes_agree_whatever_their_case() -> None:
    seen = view(
        "/forward-auth",
        ("x-forwarded-host", "App.Example"),
        ("x-original-url", "HTTPS://app.example/x"),
        ("x-forwarded-proto", "https"),
    )
    assert (seen.conflict, seen.host, seen.scheme, seen.path) == ("", "app.example", "https", "/x")


def test_envoy_setting_makes_forward_auth_an_ordinary_path() -> None:
    assert not is_forward_auth("/forward-auth", ENVOY)
    seen = view("/forward-auth", ("x-forwarded-uri", "/public/x"), trust=ENVOY)
    assert seen.path == "/forward-auth"


def test_every_header_of_every_proxy_set_is_read_whole_by_the_adapter() -> None:
    assert {
        "x-forwarded-uri",
        "x-original-uri",
        "x-original-url",
        "x-original-method",
        "x-forwarded-method",
    } <= FORWARDED_NAMES
    assert {"x-forwarded-host", "x-forwarded-proto"} <= FORWARDED_NAMES


def test_unknown_proxy_or_hop_count_is_refused() -> None:
    with pytest.raises(ValueError, match="proxy must be one of"):
        ForwardedTrust(proxy="haproxy")
    with pytest.raises(ValueError, match="trusted_hops"):
        ForwardedTrust(trusted_hops=11)


# --------------------------------------------------------------------------------------------------- client address

XFF = (("x-forwarded-for", "6.6.6.6, 1.1.1.1"), ("x-forwarded-for", "2.2.2.2"))


def test_without_trusted_hops_the_peer_is_the_source_whatever_x_forwarded_for_says() -> None:
    assert client_address(XFF, "10.0.0.9", 0) == "10.0.0.9"
    assert view("/forward-auth", *XFF).source == "10.1.2.3"


def test_the_request_line_view_takes_its_source_by_the_same_rule() -> None:
    for target in ("/x", "/forward-authx", "/forward-auth"):
        assert view(target, *XFF).source == "10.1.2.3"
        assert view(target, *XFF, trust=ForwardedTrust(trusted_hops=2)).source == "1.1.1.1"
    assert view("/x", trust=ForwardedTrust(trusted_hops=1)).source == "10.1.2.3"  # fewer entries than hops
    seen = view("/x?y", ("host", ""), ("host", "b"), ("x-forwarded-proto", " https ,http"), ("host", "c"))
    assert (seen.method, seen.scheme, seen.host, seen.path) == ("GET", "https", "b", "/x?y")
    assert (seen.context, seen.alternates, seen.conflict) == ((), (), "")


@pytest.mark.parametrize(("hops", "source"), [(1, "2.2.2.2"), (2, "1.1.1.1"), (3, "6.6.6.6"), (4, "10.0.0.9")])
def test_trusted_hops_count_x_forwarded_for_entries_from_the_right_over_all_lines(hops: int, source: str) -> None:
    assert client_address(XFF, "10.0.0.9", hops) == source


def test_a_huge_x_forwarded_for_is_read_in_bounded_memory_and_the_source_is_cut_to_64_characters() -> None:
    headers = (("x-forwarded-for", ",".join(["9.9.9.9"] * 50_000)), ("x-forwarded-for", "a" * 500))
    assert client_address(headers, "p", 1) == "a" * 64
    assert client_address(headers, "p", 2) == "9.9.9.9"


def test_a_forward_auth_allow_is_still_an_allow_for_agreeing_headers() -> None:
    seen = view("/forward-auth", *NGINX_SETS[:0], ("x-original-uri", "/public/x"), ("x-forwarded-uri", "/public/x"))
    assert isinstance(decide(EDGE, seen, inspect(EDGE, seen), None), Allow)
