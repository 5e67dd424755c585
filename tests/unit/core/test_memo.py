"""The memos' one rule: bounded in entries, starting over when full."""

from __future__ import annotations

from sidecar.core.memo import keep


def test_a_kept_value_is_returned_and_found_again() -> None:
    memo: dict[str, int] = {}
    assert keep(memo, "a", 1, 3) == 1
    assert memo == {"a": 1}


def test_a_full_memo_starts_over_and_never_holds_more_than_its_bound() -> None:
    memo: dict[int, int] = {}
    for i in range(10):
        keep(memo, i, i * i, 3)
        assert len(memo) <= 3
    assert memo == {9: 81}  # emptied when the 10th came to a full memo (after 6, 7, 8)
