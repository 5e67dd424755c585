"""Tests for sidecar.core.request: the protocol-neutral request view and browser-navigation detection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.core.request import RequestView, is_browser_navigation, prefers_html

CHROME = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,"
    "application/signed-exchange;v=b3;q=0.7"
)
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
SAFARI = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
OLD_FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
FETCH_DEFAULT = "*/*"


def _request(*headers: tuple[str, str]) -> RequestView:
    return RequestView(method="GET", scheme="https", host="app.example", path="/", headers=tuple(headers))


# --------------------------------------------------------------------------------------------------------
# prefers_html
# --------------------------------------------------------------------------------------------------------

PREFERS_HTML: list[tuple[str, str, bool]] = [
    ("chrome_navigation", CHROME, True),
    ("firefox_navigation", FIREFOX, True),
    ("safari_navigation", SAFARI, True),
    ("old_firefox_navigation", OLD_FIREFOX, True),
    ("plain_text_html", "text/html", True),
    ("xhtml", "application/xhtml+xml", True),
    ("upper_case_media_type", "TEXT/HTML", True),
    ("spaces_around", "  text/html  ", True),
    ("non_q_parameter_ignored", "text/html;level=1", True),
    ("charset_parameter_ignored", "text/html; charset=utf-8", True),
    ("wildcard_only", FETCH_DEFAULT, False),
    ("json", "application/json", False),
    ("json_then_wildcard", "application/json, */*;q=0.1", False),
    ("empty", "", False),
    ("only_commas", " , ,, ", False),
    ("html_q_zero", "text/html;q=0", False),
    ("html_q_zero_point_zero", "text/html;q=0.0", False),
    ("html_q_zero_json_low", "text/html;q=0, application/json;q=0.1", False),
    ("text_wildcard_is_not_html", "text/*", False),
    ("xml_is_not_html", "application/xml", False),
    ("q_ordering_html_higher_later", "application/json;q=0.5, text/html", True),
    ("q_ordering_html_higher_with_explicit_q", "application/json;q=0.5, text/html;q=0.6", True),
    ("q_ordering_json_higher_later", "text/html;q=0.5, application/json", False),
    ("q_ordering_json_higher_explicit", "text/html;q=0.8, application/json;q=0.9", False),
    ("q_ordering_wildcard_beats_html", "text/html;q=0.5, */*;q=0.8", False),
    ("tie_goes_to_earlier_html", "text/html, application/json", True),
    ("tie_goes_to_earlier_json", "application/json, text/html", False),
    ("tie_with_equal_explicit_q_earlier_json", "application/json;q=0.9, text/html;q=0.9", False),
    ("tie_with_equal_explicit_q_earlier_html", "text/html;q=0.9, application/json;q=0.9", True),
    ("tie_with_q_1_spelled_differently", "application/json;q=1, text/html;q=1.000", False),
    ("q_parameter_name_case_insensitive", "application/json;Q=0.1, text/html", True),
    ("q_with_spaces", "application/json ; q = 0.2 , text/html ; q = 0.3", True),
    ("garbage_q_on_html", "text/html;q=abc", False),
    ("garbage_q_on_html_json_low", "text/html;q=high, application/json;q=0.1", False),
    ("garbage_q_on_json", "application/json;q=abc, text/html;q=0.1", True),
    ("empty_q_on_html", "text/html;q=", False),
    ("q_above_one_on_html", "text/html;q=2", False),
    ("q_above_one_on_json", "application/json;q=5, text/html;q=0.5", True),
    ("negative_q_on_html", "text/html;q=-1", False),
    ("nan_q_on_html", "text/html;q=nan", False),
    ("inf_q_on_json", "application/json;q=inf, text/html;q=0.1", True),
    ("empty_media_ranges_skipped", ";;;, ;q=1,text/html", True),
]


@pytest.mark.parametrize(("accept", "expected"), [c[1:] for c in PREFERS_HTML], ids=[c[0] for c in PREFERS_HTML])
def test_prefers_html(accept: str, expected: bool) -> None:
    assert prefers_html(accept) is expected


def test_prefers_html_is_bounded_on_a_huge_accept_header() -> None:
    accept = ",".join(["application/json;q=0.1"] * 100_000 + ["text/html"])
    assert prefers_html(accept) is False, "only the first ranges are considered"


# --------------------------------------------------------------------------------------------------------
# is_browser_navigation
# --------------------------------------------------------------------------------------------------------

NAVIGATION: list[tuple[str, list[tuple[str, str]], bool]] = [
    ("fetch_mode_navigate", [("sec-fetch-mode", "navigate")], True),
    ("fetch_mode_navigate_upper_case", [("sec-fetch-mode", "NAVIGATE")], True),
    ("fetch_mode_navigate_mixed_case", [("sec-fetch-mode", "Navigate")], True),
    ("fetch_mode_navigate_with_spaces", [("sec-fetch-mode", " navigate\t")], True),
    ("fetch_mode_navigate_with_json_accept", [("sec-fetch-mode", "navigate"), ("accept", "application/json")], True),
    ("chrome_navigation", [("sec-fetch-mode", "navigate"), ("accept", CHROME)], True),
    ("html_accept_without_fetch_metadata", [("accept", SAFARI)], True),
    ("cors_with_html_accept_is_navigation_by_or", [("sec-fetch-mode", "cors"), ("accept", "text/html")], True),
    ("no_cors_with_html_accept", [("sec-fetch-mode", "no-cors"), ("accept", FIREFOX)], True),
    ("accept_split_across_lines", [("accept", "application/json;q=0.1"), ("accept", "text/html")], True),
    ("cors_with_json_accept", [("sec-fetch-mode", "cors"), ("accept", "application/json")], False),
    ("cors_with_wildcard_accept", [("sec-fetch-mode", "cors"), ("accept", "*/*")], False),
    ("same_origin_without_accept", [("sec-fetch-mode", "same-origin")], False),
    ("no_headers", [], False),
    ("empty_accept", [("accept", "")], False),
    ("json_accept", [("accept", "application/json")], False),
    ("html_q_zero", [("accept", "text/html;q=0")], False),
    ("navigate_as_substring_is_not_navigate", [("sec-fetch-mode", "navigate-ish")], False),
    ("other_header_says_navigate", [("sec-fetch-dest", "navigate"), ("x-mode", "navigate")], False),
]


@pytest.mark.parametrize(("headers", "expected"), [c[1:] for c in NAVIGATION], ids=[c[0] for c in NAVIGATION])
def test_is_browser_navigation(headers: list[tuple[str, str]], expected: bool) -> None:
    assert is_browser_navigation(_request(*headers)) is expected


# Header values as the adapters hand them over: any text, including non-UTF-8 bytes as surrogate escapes.
_header_values = st.one_of(
    st.text(),
    st.text(alphabet=" \t,;=qQ.0123456789eE+-/*\x00\udcff\uff11texhmlavigN"),
    st.binary().map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)


@given(st.lists(st.tuples(st.sampled_from(["accept", "sec-fetch-mode"]), _header_values), max_size=4))
def test_is_browser_navigation_never_raises_on_hostile_accept_or_fetch_mode(headers: list[tuple[str, str]]) -> None:
    # It runs on every denied request, before any session is known: an exception here would be a 503.
    answer = is_browser_navigation(_request(*headers))
    assert isinstance(answer, bool)
    mode = next((v for n, v in headers if n == "sec-fetch-mode"), None)
    if mode is not None and mode.strip(" \t").lower() == "navigate":
        assert answer


# --------------------------------------------------------------------------------------------------------
# RequestView
# --------------------------------------------------------------------------------------------------------


def test_request_view_values_keeps_every_line_in_order_and_first_returns_the_first() -> None:
    request = _request(("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2"), ("cookie", "c=3"))
    assert request.values("cookie") == ["a=1", "b=2", "c=3"]
    assert request.first("cookie") == "a=1"
    assert request.values("missing") == []
    assert request.first("missing") is None
