"""The pickle reader: Django-like session dicts read back as plain values; every way to run code is refused."""

from __future__ import annotations

import os
import pickle
import pickletools
import subprocess
import time
from pathlib import Path

import pytest

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats import pickle as reader

DJANGO_SESSION = {
    "_auth_user_id": "42",
    "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
    "_auth_user_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "_session_expiry": 1209600,
    "cart": [{"sku": "A-1", "qty": 2, "price": 9.5}],
    "flags": None,
    "staff": False,
}


class Gadget:
    """A class whose unpickling would run a command: what an attacker plants."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (subprocess.call, (["touch", str(self.path)],))


class Plain:
    def __init__(self) -> None:
        self.user = "alice"


def nested_lists(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_django_session_pickled_with_any_protocol_reads_back_equal(protocol: int) -> None:
    assert reader.loads(pickle.dumps(DJANGO_SESSION, protocol=protocol)) == DJANGO_SESSION


def test_tuples_sets_and_frozensets_become_lists_and_bytearrays_bytes() -> None:
    value = {"t": (1, "a"), "s": {3}, "f": frozenset({"x"}), "b": b"\x00\xff", "ba": bytearray(b"ab"), "e": ()}
    out = reader.loads(pickle.dumps(value, protocol=5))
    assert out == {"t": [1, "a"], "s": [3], "f": ["x"], "b": b"\x00\xff", "ba": b"ab", "e": []}
    assert type(out["ba"]) is bytes  # type: ignore[index]


def test_scalars_at_the_top_level_read_as_themselves() -> None:
    for value in ["x", 7, -(2**63), 2**64 - 1, 1.25, float("inf"), True, None, b"raw"]:
        assert reader.loads(pickle.dumps(value, protocol=4)) == value


def test_integer_keys_are_kept_and_shared_references_are_copied() -> None:
    shared = ["admin"]
    out = reader.loads(pickle.dumps({1: shared, "again": shared}, protocol=4))
    assert out == {1: ["admin"], "again": ["admin"]}


def test_a_pickle_of_os_system_is_refused_naming_the_global() -> None:
    with pytest.raises(Refused, match="STACK_GLOBAL"):
        reader.loads(pickle.dumps(os.system, protocol=4))
    with pytest.raises(Refused, match="GLOBAL"):
        reader.loads(pickle.dumps(os.system, protocol=0))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_a_reduce_gadget_is_refused_and_runs_nothing(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(Gadget(marker), protocol=protocol)
    pickle.loads(data)  # the control: a plain unpickle does run the command
    assert marker.exists()
    marker.unlink()
    with pytest.raises(Refused):
        reader.loads(data)
    assert not marker.exists()


def test_a_hand_written_global_and_reduce_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = f"cos\nsystem\n(Vtouch {marker}\ntR.".encode()
    with pytest.raises(Refused, match="GLOBAL at byte 0"):
        reader.loads(data)
    assert not marker.exists()


def test_a_class_instance_is_refused() -> None:
    for protocol in (0, 2, 4):
        with pytest.raises(Refused, match=r"GLOBAL|INST|OBJ"):
            reader.loads(pickle.dumps(Plain(), protocol=protocol))


def test_the_unpickler_refuses_globals_even_when_the_scan_is_bypassed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two walls: with the opcode scan switched off, find_class itself must refuse and nothing must run.
    monkeypatch.setattr(reader, "_scan", lambda data: None)
    marker = tmp_path / "pwned"
    with pytest.raises(Refused, match=r"global 'subprocess\.call'"):
        reader.loads(pickle.dumps(Gadget(marker), protocol=4))
    assert not marker.exists()
    with pytest.raises(Refused, match="persistent id"):
        reader.loads(b"\x80\x02K\x01Q.")  # BININT1 1, BINPERSID


@pytest.mark.parametrize(
    ("data", "opcode"),
    [
        (b"\x80\x02K\x01\x82.", "EXT1"),
        (b"\x80\x02K\x01\x83\x01\x00.", "EXT2"),
        (b"Pabc\n.", "PERSID"),
        (b"\x80\x05\x97.", "NEXT_BUFFER"),
        (b"\x80\x02}b.", "BUILD"),
        (b"(iabc\nxyz\n.", "INST"),
    ],
)
def test_every_opcode_that_loads_or_calls_code_is_refused_by_name(data: bytes, opcode: str) -> None:
    with pytest.raises(Refused, match=opcode):
        reader.loads(data)


def test_truncation_at_every_offset_is_refused() -> None:
    data = pickle.dumps(DJANGO_SESSION, protocol=4)
    for cut in range(len(data)):
        with pytest.raises(Refused):
            reader.loads(data[:cut])


def test_bytes_after_stop_and_bytes_that_are_no_pickle_are_refused() -> None:
    with pytest.raises(Refused, match="after the pickle's STOP"):
        reader.loads(pickle.dumps({"a": 1}) + b"junk")
    # Django's RedisCache stores a bare int as its digits, not pickled: the caller handles that, not loads.
    with pytest.raises(Refused, match="not a pickle"):
        reader.loads(b"42")
    with pytest.raises(Refused, match="STOP"):
        reader.loads(b"")


def test_a_container_that_contains_itself_is_refused() -> None:
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(Refused, match="contains itself"):
        reader.loads(pickle.dumps(looped))
    ring: dict[str, object] = {}
    ring["me"] = [ring]
    with pytest.raises(Refused, match="contains itself"):
        reader.loads(pickle.dumps(ring))


def test_a_shared_reference_dag_that_expands_beyond_the_bound_is_refused_quickly() -> None:
    level: list[object] = []
    for _ in range(30):  # 2**30 values once expanded, from a pickle of a few hundred bytes
        level = [level, level]
    data = pickle.dumps(level, protocol=4)
    assert len(data) < 1000
    started = time.perf_counter()
    with pytest.raises(Refused, match=f"more than {MAX_ELEMENTS} values"):
        reader.loads(data)
    assert time.perf_counter() - started < 1.0


def test_nesting_is_read_to_the_bound_and_refused_past_it() -> None:
    assert reader.loads(pickle.dumps(nested_lists(MAX_DEPTH), protocol=4)) == nested_lists(MAX_DEPTH)
    with pytest.raises(Refused, match=f"deeper than {MAX_DEPTH}"):
        reader.loads(pickle.dumps(nested_lists(MAX_DEPTH + 1), protocol=4))
    with pytest.raises(Refused, match="nests deeper"):
        reader.loads(b"\x80\x02" + b"]" * 10_000 + b"a" * 9_999 + b".")  # EMPTY_LIST..., APPEND...


def test_a_mark_bomb_is_refused_by_the_scan() -> None:
    with pytest.raises(Refused, match="marks deeper"):
        reader.loads(b"(" * (MAX_DEPTH + 1) + b".")


def test_element_count_is_read_to_the_bound_and_refused_past_it() -> None:
    assert len(reader.loads(pickle.dumps(list(range(MAX_ELEMENTS - 1)), protocol=4))) == MAX_ELEMENTS - 1  # type: ignore[arg-type]
    with pytest.raises(Refused, match=f"more than {MAX_ELEMENTS} values"):
        reader.loads(pickle.dumps(list(range(MAX_ELEMENTS)), protocol=4))
    with pytest.raises(Refused, match="pushes more than"):
        reader.loads(pickle.dumps([None] * 30_000, protocol=4))


def test_a_far_memo_slot_is_refused_before_the_unpickler_allocates_for_it() -> None:
    # LONG_BINPUT 0x7fffffff: the C unpickler would grow its memo to 2**32 slots.
    data = b"\x80\x02]r\xff\xff\xff\x7f."
    assert [op.name for op, _, _ in pickletools.genops(data)] == ["PROTO", "EMPTY_LIST", "LONG_BINPUT", "STOP"]
    started = time.perf_counter()
    with pytest.raises(Refused, match="memo slot 2147483647"):
        reader.loads(data)
    assert time.perf_counter() - started < 0.5


def test_keys_other_than_str_and_int_are_refused() -> None:
    for key in [1.5, b"k", None]:
        with pytest.raises(Refused, match="dict key of type"):
            reader.loads(pickle.dumps({key: "v"}, protocol=4))
    for key in [(1, 2), frozenset(), ()]:
        with pytest.raises(Refused, match="tuple or frozenset as a dict key"):
            reader.loads(pickle.dumps({key: "v"}, protocol=4))


M61 = 2**61 - 1  # ints k * M61 all hash alike


def colliding_keys(count: int) -> bytes:
    """A protocol 2 dict of ``count`` LONG1 keys k * (2**61 - 1), every one with the same hash, values None."""
    out = bytearray(b"\x80\x02}(")
    for k in range(1, count + 1):
        raw = (k * M61).to_bytes(((k * M61).bit_length() + 8) // 8, "little", signed=True)
        out += b"\x8a" + bytes([len(raw)]) + raw + b"N"
        if k % 900 == 0:  # SETITEMS, then a new MARK: the marks stay shallow
            out += b"u("
    return bytes(out + b"u.")


def test_keys_that_all_hash_alike_are_refused_by_the_scan_before_any_dict_is_built() -> None:
    data = colliding_keys(4_900)
    assert len(data) <= MAX_INPUT_BYTES
    # The scan itself refuses (before, to_plain did, after the unpickler had inserted them all: 0.35 s).
    with pytest.raises(Refused, match="integer of 65 bits at byte"):
        reader._scan(data)


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps(2**64, protocol=0),  # LONG: decimal with an L
        b"I18446744073709551616\n.",  # INT: decimal
        pickle.dumps(-(2**64), protocol=2),  # LONG1
        b"\x80\x02\x8b" + (300).to_bytes(4, "little") + b"\x01" * 300 + b".",  # LONG4
    ],
)
def test_integers_over_64_bits_are_refused_in_every_opcode_by_the_scan(data: bytes) -> None:
    with pytest.raises(Refused, match="bits at byte"):
        reader._scan(data)


def test_integers_of_64_bits_read_in_every_opcode() -> None:
    values = [2**64 - 1, -(2**63), 2**63 - 1, 0, -1]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert reader.loads(pickle.dumps(values, protocol=protocol)) == values
    assert reader.loads(b"I18446744073709551615\n.") == 2**64 - 1
    assert reader.loads(b"I01\n.") is True  # INT's spelling of True


@pytest.mark.parametrize(
    "value",
    [
        {(1, 2): "v"},
        {"a": 1, (): 2},
        {frozenset({1}): "v"},
        {(1,)},
        frozenset({(1, 2)}),
        frozenset({frozenset()}),
        [(1,), {(1,): 1}],  # the key a memo reference to a tuple built before
    ],
)
def test_a_tuple_or_frozenset_as_a_dict_key_or_set_item_is_refused_by_the_scan(value: object) -> None:
    # A tuple's hash can be inverted: keys that all hash alike would come back. (Protocols 2 and 3 write a set
    # as a call to the global set, refused for that.)
    for protocol in (4, 5):
        with pytest.raises(Refused, match=r"tuple or frozenset as a (dict key|set item)"):
            reader._scan(pickle.dumps(value, protocol=protocol))


def test_sets_of_scalars_and_tuples_of_tuples_still_read() -> None:
    value = {"s": {1, 2}, "f": frozenset({2.5}), "t": ((1,), (frozenset({3}),))}
    assert reader.loads(pickle.dumps(value, protocol=5)) == {"s": [1, 2], "f": [2.5], "t": [[1], [[3]]]}


def test_integers_over_64_bits_and_unencodable_strings_are_refused() -> None:
    with pytest.raises(Refused, match="65 bits"):
        reader.loads(pickle.dumps(2**64, protocol=4))
    with pytest.raises(Refused, match="unpaired surrogates"):
        reader.loads(pickle.dumps({"k": "\ud800"}, protocol=4))
    with pytest.raises(Refused, match="unpaired surrogates"):
        reader.loads(pickle.dumps({"\udcff": 1}, protocol=4))


def test_input_over_the_size_bound_is_refused_before_parsing() -> None:
    data = pickle.dumps("x" * MAX_INPUT_BYTES, protocol=4)
    with pytest.raises(Refused, match="over the"):
        reader.loads(data)


def test_a_tuple_chain_that_would_overflow_the_c_stack_when_hashed_is_refused_before_unpickling() -> None:
    # EMPTY_DICT, EMPTY_TUPLE, TUPLE1 x 60,000, BININT1 1, SETITEM: hashing the key recurses once per level in C.
    bomb = b"\x80\x04}" + b")" + b"\x85" * 60_000 + b"K\x01s."
    assert len(bomb) <= MAX_INPUT_BYTES
    with pytest.raises(Refused, match=f"tuples deeper than {MAX_DEPTH}"):
        reader.loads(bomb)
    # The same through the memo: a deep tuple stored, fetched back and nested further still counts its height.
    stored = b"\x80\x04)" + b"\x85" * 20 + b"\x94" + b"h\x00" + b"\x85" * 12 + b"."
    with pytest.raises(Refused, match="tuples deeper"):
        reader.loads(stored)
    assert reader.loads(b"\x80\x04)" + b"\x85" * (MAX_DEPTH - 1) + b".") == nested_lists(MAX_DEPTH)


@pytest.mark.parametrize("data", [b"\x80\x04a.", b"\x80\x04(e.", b"\x80\x040.", b"\x80\x04(K\x01s.", b"\x80\x04t."])
def test_opcodes_that_pop_what_the_stack_does_not_hold_are_refused(data: bytes) -> None:
    with pytest.raises(Refused, match=r"MARK that is not there|more than its stack holds"):
        reader.loads(data)


def test_what_djangos_redis_cache_serializer_writes_reads_back() -> None:
    redis_backend = pytest.importorskip("django.core.cache.backends.redis", reason="Django is not installed")
    serializer = redis_backend.RedisSerializer()
    assert reader.loads(serializer.dumps(DJANGO_SESSION)) == DJANGO_SESSION
    # A bare int is left unpickled (redis-py then stores its digits): the caller reads those before loads.
    assert serializer.dumps(42) == 42
    with pytest.raises(Refused):
        reader.loads(b"42")


def test_a_proto_opcode_anywhere_but_the_start_is_refused() -> None:
    # pickle.dumps writes PROTO first or not at all; repeated, it only pads the scan's work.
    with pytest.raises(Refused, match="PROTO at byte 2"):
        reader.loads(b"\x80\x04\x80\x04N.")
