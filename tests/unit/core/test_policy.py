"""Tests for sidecar.core.policy: canonical paths, segment-aware longest-prefix route matching, roles."""

from __future__ import annotations

import pytest

from sidecar.core import policy as policy_module
from sidecar.core.policy import DEFAULT_ROUTE, Route, RoutePolicy, canonical_path, missing_roles

PUBLIC = Route("/public", public=True)
ADMIN = Route("/admin", roles=("admin",))
AUDIT = Route("/admin/audit", roles=("admin", "auditor"))
PRIVATE = Route("/public/private")

ROUTES = [PUBLIC, ADMIN, AUDIT, PRIVATE]


@pytest.fixture(params=["as_given", "reversed"])
def policy(request: pytest.FixtureRequest) -> RoutePolicy:
    routes = ROUTES if request.param == "as_given" else list(reversed(ROUTES))
    return RoutePolicy.of(routes)


# --------------------------------------------------------------------------------------------------------
# canonical_path
# --------------------------------------------------------------------------------------------------------

CANONICAL: list[tuple[str, str, str]] = [
    ("root", "/", "/"),
    ("empty", "", "/"),
    ("plain", "/a/b", "/a/b"),
    ("trailing_slash_dropped", "/a/b/", "/a/b"),
    ("query_dropped", "/a/b?x=1&y=2", "/a/b"),
    ("query_with_slashes_and_dots_dropped", "/a?next=/../admin", "/a"),
    ("fragment_dropped", "/a/b#frag", "/a/b"),
    ("query_then_fragment_dropped", "/a?q#f", "/a"),
    ("only_query", "?x=1", "/"),
    ("double_slashes_merged", "//a//b//", "/a/b"),
    ("dot_segments_dropped", "/./a/./b/.", "/a/b"),
    ("dot_dot_pops", "/a/b/../c", "/a/c"),
    ("dot_dot_at_end_pops", "/a/b/..", "/a"),
    ("dot_dot_beyond_root_stays_at_root", "/../../a", "/a"),
    ("many_dot_dots_beyond_root", "/a/b/../../../../..", "/"),
    ("percent_decoded_letter", "/%61dmin", "/admin"),
    ("percent_decoded_upper_hex", "/%41%42", "/AB"),
    ("percent_decoded_space", "/a%20b", "/a b"),
    ("percent_decoded_utf8", "/caf%C3%A9", "/caf\xe9"),
    ("encoded_dot_dot_is_a_dot_segment", "/a/%2e%2e/b", "/b"),
    ("mixed_encoded_dot_dot", "/a/.%2E/b", "/b"),
    ("encoded_single_dot", "/a/%2e/b", "/a/b"),
    ("invalid_escape_kept_literally", "/a%zz", "/a%zz"),
    ("lone_percent_kept", "/100%", "/100%"),
    ("double_encoding_decoded_once", "/%2561dmin", "/%61dmin"),
    # The canonical path is what an upstream that decodes everything routes by: %2F is a slash there.
    ("encoded_slash_is_a_slash", "/a%2Fb", "/a/b"),
    ("encoded_slash_makes_a_dot_segment", "/x/a%2F..", "/x"),
    ("encoded_slash_dot_dot_resolved", "/a%2F..%2Fb", "/b"),
    ("backslash_is_a_slash", "/a\\..\\b", "/b"),
]


@pytest.mark.parametrize(("path", "expected"), [c[1:] for c in CANONICAL], ids=[c[0] for c in CANONICAL])
def test_canonical_path(path: str, expected: str) -> None:
    assert canonical_path(path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/%ff", "/\ufffd"), ("/a/%C3", "/a/\ufffd"), ("/%C0%AE%C0%AE/admin", "/\ufffd\ufffd\ufffd\ufffd/admin")],
    ids=["ff", "truncated_utf8", "overlong"],
)
def test_canonical_path_replaces_undecodable_escapes_instead_of_raising(path: str, expected: str) -> None:
    assert canonical_path(path) == expected


# --------------------------------------------------------------------------------------------------------
# RoutePolicy.match
# --------------------------------------------------------------------------------------------------------

MATCH: list[tuple[str, str, Route]] = [
    ("public_exact", "/public", PUBLIC),
    ("public_trailing_slash", "/public/", PUBLIC),
    ("public_child", "/public/x", PUBLIC),
    ("public_deep_child", "/public/x/y/z.css", PUBLIC),
    ("public_with_query", "/public?x", PUBLIC),
    ("public_with_query_value", "/public?next=/admin", PUBLIC),
    ("public_with_fragment", "/public#top", PUBLIC),
    ("publicity_is_not_public", "/publicity", DEFAULT_ROUTE),
    ("public_dash_suffix_is_not_public", "/public-x", DEFAULT_ROUTE),
    ("public_dot_suffix_is_not_public", "/public.json", DEFAULT_ROUTE),
    ("shorter_than_prefix", "/publi", DEFAULT_ROUTE),
    ("root", "/", DEFAULT_ROUTE),
    ("empty_path", "", DEFAULT_ROUTE),
    ("unrelated", "/app/page", DEFAULT_ROUTE),
    ("public_as_later_segment", "/x/public", DEFAULT_ROUTE),
    ("public_case_differs", "/PUBLIC", DEFAULT_ROUTE),
    ("admin_exact", "/admin", ADMIN),
    ("admin_child", "/admin/users", ADMIN),
    ("administrator_is_not_admin", "/administrator", DEFAULT_ROUTE),
    ("longest_prefix_audit", "/admin/audit", AUDIT),
    ("longest_prefix_audit_child", "/admin/audit/2024", AUDIT),
    ("audit_lookalike_falls_back_to_admin", "/admin/auditing", ADMIN),
    ("longest_prefix_beats_public", "/public/private", PRIVATE),
    ("longest_prefix_beats_public_child", "/public/private/x", PRIVATE),
    ("private_lookalike_stays_public", "/public/privateer", PUBLIC),
    ("dot_dot_out_of_public_into_admin", "/public/../admin", ADMIN),
    ("dot_dot_out_of_public_into_admin_child", "/public/x/../../admin/users", ADMIN),
    ("encoded_dot_dot_out_of_public", "/public/%2e%2e/admin", ADMIN),
    ("dot_dot_beyond_root_into_admin", "/../../admin", ADMIN),
    ("encoded_admin", "/%61dmin", ADMIN),
    ("encoded_admin_child", "/%61%64%6d%69%6e/x", ADMIN),
    ("double_slash_admin", "//admin", ADMIN),
    ("dot_admin", "/./admin/", ADMIN),
    ("dot_dot_out_of_admin_into_public", "/admin/../public", PUBLIC),
    ("dot_dot_out_of_private_into_public", "/public/private/../x", PUBLIC),
    ("encoded_slash_into_admin", "/admin%2Fusers", ADMIN),
    ("path_parameter_keeps_admin_rule", "/admin;jsessionid=x", ADMIN),
    ("path_parameter_under_public_stays_public", "/public/x;v=1", PUBLIC),
    ("undecodable_escape_at_root", "/%ff", DEFAULT_ROUTE),
    ("undecodable_escape_under_public_is_not_public", "/public/%ff", DEFAULT_ROUTE),
    ("overlong_utf8_dots_under_public_is_not_public", "/public/%C0%AE%C0%AE/admin", DEFAULT_ROUTE),
    ("double_encoded_dot_dot_out_of_public", "/public/%252e%252e/admin", ADMIN),
    ("double_encoded_slash_dot_dot_out_of_public", "/public%252f%252e%252e%252fadmin/x", ADMIN),
    ("double_encoded_admin", "/%2561dmin", ADMIN),
    ("double_encoded_undecodable_under_public_is_not_public", "/public/%25ff", DEFAULT_ROUTE),
    ("an_escaped_percent_in_a_public_name_stays_public", "/public/100%25", PUBLIC),
]


@pytest.mark.parametrize(("path", "expected"), [c[1:] for c in MATCH], ids=[c[0] for c in MATCH])
def test_match_picks_the_longest_segment_aware_prefix(policy: RoutePolicy, path: str, expected: Route) -> None:
    assert policy.match(path) == expected


def test_match_on_undecodable_escape_is_never_public_even_with_a_public_root() -> None:
    policy = RoutePolicy.of([Route("/", public=True)])
    assert policy.match("/anything") == Route("/", public=True)
    assert policy.match("/%ff").public is False


@pytest.mark.parametrize("path", ["/public%2F..%2Fadmin", "/public/x%2F..%2F..%2Fadmin", "/public%2f%2e%2e%2fadmin"])
def test_match_encoded_slash_dot_dot_cannot_borrow_the_public_rule(policy: RoutePolicy, path: str) -> None:
    assert policy.match(path).public is False


@pytest.mark.parametrize("path", ["/admin/%ff", "/admin/users%C3", "/admin/%C0%AE"])
def test_match_undecodable_escape_keeps_the_role_requirement_of_its_prefix(policy: RoutePolicy, path: str) -> None:
    assert policy.match(path).roles == ("admin",)


@pytest.mark.parametrize(
    ("prefix", "canonical"),
    [("/public/", "/public"), ("public", "/public"), ("//public//", "/public"), ("/%70ublic", "/public")],
    ids=["trailing_slash", "no_leading_slash", "double_slashes", "encoded"],
)
def test_route_prefixes_are_canonicalised(prefix: str, canonical: str) -> None:
    policy = RoutePolicy.of([Route(prefix, public=True)])
    assert policy.routes[0].prefix == canonical
    assert policy.match("/public/x").public is True
    assert policy.match("/publicity").public is False


def test_root_route_catches_everything_not_more_specific() -> None:
    root = Route("/", roles=("staff",))
    policy = RoutePolicy.of([root, PUBLIC])
    assert policy.match("/anything") == root
    assert policy.match("/") == root
    assert policy.match("/public/x") == PUBLIC


def test_empty_policy_gives_the_default_authenticated_rule() -> None:
    route = RoutePolicy.of([]).match("/public")
    assert route == DEFAULT_ROUTE
    assert route.public is False
    assert route.roles == ()


# --------------------------------------------------------------------------------------------------------
# missing_roles
# --------------------------------------------------------------------------------------------------------

MISSING: list[tuple[str, tuple[str, ...], list[str], tuple[str, ...]]] = [
    ("no_roles_required_none_held", (), [], ()),
    ("no_roles_required_some_held", (), ["admin"], ()),
    ("all_missing_in_route_order", ("admin", "ops"), [], ("admin", "ops")),
    ("one_missing", ("admin", "ops"), ["ops"], ("admin",)),
    ("all_held", ("admin", "ops"), ["ops", "admin"], ()),
    ("extra_held_roles_ignored", ("admin",), ["admin", "dev", "x"], ()),
    ("case_sensitive", ("admin",), ["Admin", "ADMIN"], ("admin",)),
    ("no_substring_match", ("admin",), ["admins", "sysadmin"], ("admin",)),
]


@pytest.mark.parametrize(("required", "held", "expected"), [c[1:] for c in MISSING], ids=[c[0] for c in MISSING])
def test_missing_roles(required: tuple[str, ...], held: list[str], expected: tuple[str, ...]) -> None:
    assert missing_roles(Route("/x", roles=required), held) == expected


def test_missing_roles_accepts_any_iterable() -> None:
    assert missing_roles(AUDIT, iter(["admin"])) == ("auditor",)


def test_a_targets_rule_is_matched_once_and_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = RoutePolicy.of([Route("/public", public=True), Route("/admin", roles=("admin",))])
    calls: list[str] = []
    real = RoutePolicy._match
    monkeypatch.setattr(RoutePolicy, "_match", lambda self, path: calls.append(path) or real(self, path))
    assert policy.match("/admin/x?y=1").roles == ("admin",)
    assert policy.match("/admin/x?y=1").roles == ("admin",)
    assert policy.match("/public/%2e%2e/admin").roles == ("admin",)  # each target read its own way
    assert calls == ["/admin/x?y=1", "/public/%2e%2e/admin"]
    monkeypatch.setattr(policy_module, "MAX_MATCHED_TARGETS", 2)
    for i in range(5):
        policy.match(f"/p{i}")
        assert len(policy._matched) <= 2


def test_a_long_target_is_matched_every_time_and_not_kept() -> None:
    policy = RoutePolicy.of([Route("/admin", roles=("admin",))])
    long_target = "/admin/" + "a" * policy_module.MAX_MATCHED_TARGET_LENGTH
    assert policy.match(long_target).roles == ("admin",)
    assert long_target not in policy._matched
