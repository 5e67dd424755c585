"""parse_duration accepts exactly the documented forms; format_duration gives the shortest exact form."""

from __future__ import annotations

import math

import pytest

from sidecar.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("150ms", 0.15),
        ("1ms", 0.001),
        ("0.5ms", 0.0005),
        ("90s", 90.0),
        ("1.5s", 1.5),
        ("30m", 1800.0),
        ("12h", 43200.0),
        ("1.5h", 5400.0),
        ("7d", 604800.0),
        ("90", 90.0),
        ("1.5", 1.5),
        ("+5s", 5.0),
        (90, 90.0),
        (1.5, 1.5),
        (0.001, 0.001),
    ],
)
def test_parse_duration_accepts_documented_forms(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "fast",
        "5 s",
        " 5s",
        "5s ",
        "5S",
        "5sec",
        "5min",
        "5w",
        "1e3",
        "1.",
        ".5",
        "s",
        "ms",
        "1h30m",
        "5,5s",
    ],
)
def test_parse_duration_rejects_malformed_strings_saying_what_is_accepted(value: str) -> None:
    with pytest.raises(ValueError, match=r"use 150ms, 90s, 30m, 12h, 7d or plain seconds"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["0", "0s", "0ms", "-5s", "-1", 0, 0.0, -1, -0.5])
def test_parse_duration_rejects_zero_and_negative(value: str | int | float) -> None:
    with pytest.raises(ValueError, match="must be greater than 0"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_parse_duration_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["nan", "inf", "infinity"])
def test_parse_duration_rejects_non_finite_strings(value: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def test_parse_duration_rejects_overflowing_values_with_a_short_message() -> None:
    with pytest.raises(ValueError, match="too large") as info:
        parse_duration("9" * 400 + "d")
    assert len(str(info.value)) < 100


@pytest.mark.parametrize("value", [True, False, None, [1], {"s": 1}, b"5s"])
def test_parse_duration_rejects_other_types_with_value_error(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.15, "150ms"),
        (0.001, "1ms"),
        (0.0005, "0.5ms"),
        (1.5, "1500ms"),
        (1.0, "1s"),
        (90.0, "90s"),
        (1800.0, "30m"),
        (5400.0, "90m"),
        (3600.0, "1h"),
        (43200.0, "12h"),
        (86400.0, "1d"),
        (604800.0, "7d"),
        (90000.0, "25h"),
        (0.0, "0s"),
    ],
)
def test_format_duration_uses_the_largest_exact_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    "value",
    [
        "150ms",
        "0.5ms",
        "90s",
        "1.5",
        "30m",
        "12h",
        "7d",
        "1.25h",
        "0.1",
        "0.3",
        "123456789",
        1e-7,
        1e300,
        0.1 + 0.2,
    ],
)
def test_format_duration_round_trips_through_parse_duration(value: str | float) -> None:
    seconds = parse_duration(value)
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_format_duration_rejects_negative_and_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="cannot format"):
        format_duration(value)
