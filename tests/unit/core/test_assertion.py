"""Tests for sidecar.core.assertion: the audience, the claim choice per route and the claims set of an assertion."""

from __future__ import annotations

import ast
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.assertion import (
    CLAIM_NAMES,
    CONTEXT_AUDIENCE,
    CONTEXT_CLAIMS,
    MAX_TTL,
    AssertionSettings,
    assertion_claims,
    audience_for,
    claim_problem,
    claims_for,
    claims_problem,
    kid_problem,
    ttl_problem,
)
from sidecar.core.session import SessionRecord

SETTINGS = AssertionSettings(
    header="x-user-assertion", issuer="session-sidecar", ttl=60.0, claims=CLAIM_NAMES, audience=""
)
RECORD = SessionRecord(
    session_id="s-handle-1",
    user_id="alice",
    email="alice@example.com",
    roles=("admin", "dev"),
    attributes={"team": "blue"},
)
NOW = 1_800_000_000.75


def claims(
    record: SessionRecord = RECORD,
    *,
    issuer: str = "session-sidecar",
    audience: str = "app.example.com",
    now: float = NOW,
    ttl: float = 60.0,
    claims: tuple[str, ...] = CLAIM_NAMES,
) -> dict[str, object]:
    return assertion_claims(record, issuer=issuer, audience=audience, now=now, ttl=ttl, claims=claims)


# --------------------------------------------------------------------------------------------------- the module


def test_core_module_imports_nothing_impure() -> None:
    source = Path(__file__).resolve().parents[3] / "sidecar" / "core" / "assertion.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    pure = {"__future__", "functools", "math", "re", "collections.abc", "dataclasses"}
    assert imported <= pure | {"sidecar.core.session", "sidecar.core.durations"}


# The rules the config validates assertion.* with (sidecar.config calls these; it keeps no copy).


@pytest.mark.parametrize("ttl", [1.0, 60.0, MAX_TTL])
def test_a_ttl_from_one_second_to_five_minutes_has_no_problem(ttl: float) -> None:
    assert ttl_problem(ttl) is None


@pytest.mark.parametrize(
    ("ttl", "problem"),
    [
        (600.0, "must be between 1s and 5m (got 10m)"),
        (0.5, "must be between 1s and 5m (got 500ms)"),
        (math.inf, "must be between 1s and 5m (got inf)"),
        (-1.0, "must be between 1s and 5m (got -1.0)"),
    ],
)
def test_a_ttl_problem_names_the_bound_as_durations(ttl: float, problem: str) -> None:
    assert ttl_problem(ttl) == problem


def test_every_claim_name_is_known_and_others_are_named_cut_short() -> None:
    assert all(claim_problem(name) is None for name in CLAIM_NAMES)
    problem = claim_problem("phone" * 10_000)
    assert problem is not None and problem.startswith("unknown claim 'phonephone") and len(problem) < 200


def test_claims_without_sub_are_a_problem() -> None:
    assert claims_problem(("email", "roles")) == "must include sub (an assertion without a subject identifies no one)"
    assert claims_problem(("sub",)) is None


@pytest.mark.parametrize("kid", ["k", "2026-01.es256", "a_b-c.d", "k" * 64])
def test_key_ids_of_url_safe_characters_up_to_64_have_no_problem(kid: str) -> None:
    assert kid_problem(kid) is None


@pytest.mark.parametrize("kid", ["", "k" * 65, "k/1", "k 1", "k\n", "k\u00e9"])
def test_other_key_ids_are_a_problem(kid: str) -> None:
    assert kid_problem(kid) == "invalid key id: 1-64 characters of A-Z a-z 0-9 _ . -"


def test_context_extension_keys_are_the_documented_ones() -> None:
    assert (CONTEXT_AUDIENCE, CONTEXT_CLAIMS) == ("assertion_audience", "assertion_claims")


# --------------------------------------------------------------------------------------------------- audience


@pytest.mark.parametrize(
    ("host", "audience"),
    [
        ("app.example.com", "app.example.com"),
        ("App.Example.COM", "app.example.com"),
        ("app.example.com:8443", "app.example.com"),
        ("app.example.com.", "app.example.com"),
        ("app.example.com.:443", "app.example.com"),
        ("app.example.com:", "app.example.com"),
        ("10.0.0.7:8080", "10.0.0.7"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[2001:DB8::1]:443", "[2001:db8::1]"),
        ("localhost", "localhost"),
    ],
)
def test_audience_is_the_host_lowercased_without_port(host: str, audience: str) -> None:
    assert audience_for(SETTINGS, host, {}) == audience


@pytest.mark.parametrize(
    "host",
    [
        "",
        ":8080",
        "::1",  # an unbracketed IPv6 address is not an authority
        "host:port",
        "host:8080:9090",
        "host:\uff18\uff10",  # full-width digits: str.isdigit() accepts them
        "[::1",
        "[]:80",
        "[::1]x",
        "[::1]:http",
        "a b.example.com",
        "evil.example.com/path",
        "user@host",
        "host\x00",
        "x" * 256,
    ],
    ids=repr,
)
def test_a_host_that_is_no_host_gives_no_audience(host: str) -> None:
    assert audience_for(SETTINGS, host, {}) is None


def test_configured_audience_wins_over_the_host() -> None:
    configured = replace(SETTINGS, audience="orders-api")
    assert audience_for(configured, "App.example.com:443", {}) == "orders-api"
    assert audience_for(configured, "", {}) == "orders-api"


def test_route_audience_wins_over_configured_audience_and_host() -> None:
    configured = replace(SETTINGS, audience="orders-api")
    context = {CONTEXT_AUDIENCE: "Billing-API"}
    assert audience_for(configured, "app.example.com", context) == "Billing-API"  # taken verbatim
    assert audience_for(SETTINGS, "", context) == "Billing-API"


def test_empty_route_audience_means_not_set() -> None:
    assert audience_for(SETTINGS, "app.example.com", {CONTEXT_AUDIENCE: ""}) == "app.example.com"


# --------------------------------------------------------------------------------------------------- claims_for


def test_without_a_route_choice_the_configured_claims_apply() -> None:
    assert claims_for(SETTINGS, {}) == CLAIM_NAMES
    narrow = replace(SETTINGS, claims=("sid", "sub"))
    assert claims_for(narrow, {}) == ("sub", "sid")
    assert claims_for(narrow, {CONTEXT_CLAIMS: ""}) == ("sub", "sid")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sub,email", ("sub", "email")),
        ("roles", ("sub", "roles")),  # sub is always there
        ("sid, ROLES ,email", ("sub", "email", "roles", "sid")),  # canonical order, trimmed, any case
        ("email,bogus,token", ("sub", "email")),  # unknown names are ignored, never widen the set
        ("bogus", ("sub",)),
        ("sub,sub,email", ("sub", "email")),
        ("none,email", ("sub", "email")),  # "none" only opts out alone
    ],
)
def test_route_claims_replace_the_configured_ones(value: str, expected: tuple[str, ...]) -> None:
    assert claims_for(SETTINGS, {CONTEXT_CLAIMS: value}) == expected


@pytest.mark.parametrize("value", ["none", "NONE", " none "])
def test_route_claims_none_means_no_assertion(value: str) -> None:
    assert claims_for(SETTINGS, {CONTEXT_CLAIMS: value}) is None


# --------------------------------------------------------------------------------------------------- claims


def test_claims_carry_issuer_subject_audience_and_integer_times() -> None:
    payload = claims()
    assert payload == {
        "iss": "session-sidecar",
        "sub": "alice",
        "aud": "app.example.com",
        "iat": 1_800_000_000,
        "exp": 1_800_000_060,
        "email": "alice@example.com",
        "roles": ["admin", "dev"],
        "sid": "s-handle-1",
    }
    assert type(payload["iat"]) is int and type(payload["exp"]) is int


def test_claims_have_neither_nbf_nor_jti_nor_attributes() -> None:
    assert not {"nbf", "jti", "team", "attributes", "attrs"} & claims().keys()


def test_exp_never_exceeds_iat_plus_ttl() -> None:
    for ttl in (1.0, 1.9, 59.5, 300.0):
        payload = claims(ttl=ttl, now=NOW)
        assert isinstance(payload["exp"], int) and isinstance(payload["iat"], int)
        assert 1 <= payload["exp"] - payload["iat"] <= ttl
        assert payload["iat"] <= NOW


def test_unchosen_claims_are_left_out() -> None:
    assert claims(claims=("sub",)).keys() == {"iss", "sub", "aud", "iat", "exp"}
    assert "email" not in claims(claims=("sub", "roles", "sid"))
    assert "roles" not in claims(claims=("sub", "email"))


def test_email_is_left_out_when_the_session_has_none() -> None:
    anonymous_mail = SessionRecord(session_id="s", user_id="bob", email=None, roles=())
    assert "email" not in claims(anonymous_mail)


def test_roles_are_a_json_array_even_when_empty() -> None:
    no_roles = SessionRecord(session_id="s", user_id="bob", email=None, roles=())
    assert claims(no_roles)["roles"] == []
    assert isinstance(claims()["roles"], list)


def test_sid_is_the_handle_and_sub_the_user_id() -> None:
    payload = claims()
    assert (payload["sid"], payload["sub"]) == (RECORD.session_id, RECORD.user_id)


@pytest.mark.parametrize("ttl", [300.5, 301.0, 3600.0, 0.5, 0.0, -1.0, math.inf, math.nan])
def test_ttl_outside_one_second_to_five_minutes_is_refused(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        claims(ttl=ttl)


def test_five_minutes_is_the_longest_ttl() -> None:
    payload = claims(ttl=300.0)
    assert isinstance(payload["iat"], int)
    assert payload["exp"] == payload["iat"] + 300


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"audience": ""}, "audience"),
        ({"issuer": ""}, "issuer"),
        ({"now": math.nan}, "now"),
        ({"now": -1.0}, "now"),
    ],
)
def test_claims_without_audience_issuer_or_a_time_are_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        claims(**override)
