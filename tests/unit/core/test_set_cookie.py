"""Tests for sidecar.core.set_cookie: the Set-Cookie header value handed to the browser."""

from __future__ import annotations

import re

import pytest

from sidecar.core.set_cookie import set_cookie_header

TOKEN = "s1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB"

CASES: list[tuple[str, str, float, str]] = [
    ("default_name_twelve_hours", "SESSION", 43_200, "43200"),
    ("host_prefixed_name", "__Host-session", 3600, "3600"),
    ("fraction_is_floored", "SESSION", 43_200.9, "43200"),
    ("under_a_second_is_zero", "SESSION", 0.5, "0"),
    ("zero", "SESSION", 0, "0"),
    ("negative_clamped_to_zero", "SESSION", -5.5, "0"),
    ("seven_days", "SESSION", 7 * 86_400.0, "604800"),
]


def _attributes(header: str) -> list[str]:
    return [part.strip() for part in header.split(";")[1:]]


@pytest.mark.parametrize(("name", "max_age", "expected_max_age"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_set_cookie_has_secure_httponly_lax_root_path_and_integer_max_age(
    name: str, max_age: float, expected_max_age: str
) -> None:
    header = set_cookie_header(name, TOKEN, max_age)
    assert header.split(";")[0] == f"{name}={TOKEN}"
    attributes = _attributes(header)
    for required in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attributes.count(required) == 1, (required, header)
    max_ages = [a for a in attributes if a.lower().startswith("max-age=")]
    assert max_ages == [f"Max-Age={expected_max_age}"]
    assert re.fullmatch(r"Max-Age=\d+", max_ages[0])


@pytest.mark.parametrize("max_age", [0, 3600, 43_200.5], ids=["zero", "hour", "fractional"])
def test_set_cookie_has_no_domain_so_host_prefix_is_accepted(max_age: float) -> None:
    header = set_cookie_header("__Host-session", TOKEN, max_age)
    assert not any(a.lower().startswith("domain") for a in _attributes(header))
    assert "domain" not in header.lower()


def test_set_cookie_is_a_single_header_line_of_printable_ascii() -> None:
    header = set_cookie_header("SESSION", TOKEN, 43_200)
    assert header.isascii()
    assert header.isprintable()
