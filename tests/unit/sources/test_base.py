from sidecar.sources.base import MAX_VALUES_EXAMINED, examined


def test_a_source_examines_distinct_values_in_header_order() -> None:
    assert examined(("b", "a", "b", "c", "a")) == ("b", "a", "c")
    assert examined(("only",)) == ("only",)
    assert examined(()) == ()


def test_a_cookie_header_stuffed_with_values_costs_a_bounded_number_of_checks() -> None:
    stuffed = tuple(f"s:forged{i}.sig" for i in range(2000))
    assert examined(stuffed) == stuffed[:MAX_VALUES_EXAMINED]
