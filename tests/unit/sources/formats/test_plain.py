import pytest

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, Refused
from sidecar.sources.formats.plain import to_plain


class Plain:
    def __init__(self) -> None:
        self.user = "alice"


def test_plain_values_are_copied_with_tuples_and_sets_as_lists() -> None:
    source = {"a": (1, 2), "b": frozenset({"x"}), 3: [None, True, 1.5, b"raw", bytearray(b"ba")]}
    assert to_plain(source, "test") == {"a": [1, 2], "b": ["x"], 3: [None, True, 1.5, b"raw", b"ba"]}


def test_types_outside_the_plain_set_are_refused() -> None:
    with pytest.raises(Refused, match="value of type Plain"):
        to_plain({"a": [Plain()]}, "test")
    with pytest.raises(Refused, match="value of type complex"):
        to_plain(1j, "test")
    with pytest.raises(Refused, match="dict key of type tuple"):
        to_plain({(1, 2): "x"}, "test")


def test_a_container_that_contains_itself_is_refused() -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(Refused, match="contains itself"):
        to_plain({"a": loop}, "test")


def test_shared_references_count_each_time_they_are_reached() -> None:
    shared = list(range(100))
    fan_out = [shared] * (MAX_ELEMENTS // 100 + 1)
    with pytest.raises(Refused, match=f"more than {MAX_ELEMENTS} values"):
        to_plain(fan_out, "test")


def test_nesting_deeper_than_the_bound_is_refused() -> None:
    deep: list[object] = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(Refused, match=f"deeper than {MAX_DEPTH}"):
        to_plain(deep, "test")


def test_huge_integers_and_lone_surrogates_are_refused() -> None:
    with pytest.raises(Refused, match="bits"):
        to_plain({"id": 1 << 80}, "test")
    with pytest.raises(Refused, match="surrogates"):
        to_plain({"id": "\ud800"}, "test")
