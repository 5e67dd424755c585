"""Repeated invalid tokens per source: fixed windows, one flag per window, a bounded table."""

from __future__ import annotations

import pytest

from sidecar.core.abuse import RepeatedInvalidTokens


def test_a_source_is_flagged_exactly_when_it_reaches_the_threshold() -> None:
    tracker = RepeatedInvalidTokens(threshold=3, window=60)
    assert [tracker.record("10.0.0.1", 100.0 + i) for i in range(5)] == [False, False, True, False, False]
    assert tracker.count("10.0.0.1", 105.0) == 5


def test_sources_are_counted_separately() -> None:
    tracker = RepeatedInvalidTokens(threshold=2, window=60)
    assert not tracker.record("a", 0.0)
    assert not tracker.record("b", 0.0)
    assert tracker.record("a", 1.0)
    assert tracker.flagged(1.0) == 1


def test_a_new_window_starts_the_count_again_and_can_flag_again() -> None:
    tracker = RepeatedInvalidTokens(threshold=2, window=10)
    assert [tracker.record("a", t) for t in (0.0, 1.0)] == [False, True]
    assert tracker.flagged(9.9) == 1
    assert tracker.flagged(10.0) == 0  # the window is over: no longer counted as offending
    assert [tracker.record("a", t) for t in (10.0, 11.0)] == [False, True]


def test_the_table_forgets_the_least_recently_active_source_first() -> None:
    tracker = RepeatedInvalidTokens(threshold=5, window=60, max_sources=2)
    tracker.record("old", 0.0)
    tracker.record("busy", 0.0)
    tracker.record("old", 1.0)  # "old" is now the most recent; "busy" goes first
    tracker.record("new", 2.0)
    assert len(tracker) == 2
    assert tracker.count("busy", 2.0) == 0
    assert tracker.count("old", 2.0) == 2


def test_memory_stays_bounded_under_a_spray_of_sources() -> None:
    tracker = RepeatedInvalidTokens(threshold=2, window=60, max_sources=100)
    for i in range(10_000):
        tracker.record(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", float(i))
    assert len(tracker) == 100


@pytest.mark.parametrize("kwargs", [{"threshold": 0}, {"window": 0.0}, {"max_sources": 0}])
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        RepeatedInvalidTokens(**kwargs)  # type: ignore[arg-type]
