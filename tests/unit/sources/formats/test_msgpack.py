"""The MessagePack reader: Flask-Session records as msgspec writes them (and the pickles older versions wrote),
with extension types, odd keys and every bound refused."""

from __future__ import annotations

import datetime
import os
import pickle
import struct
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats import msgpack as reader

# Flask-Session 0.7+ encodes dict(session) with msgspec.msgpack.Encoder(); Flask-Login's keys.
FLASK_SESSION: dict[str, object] = {
    "_permanent": True,
    "_user_id": "42",
    "_fresh": True,
    "_id": "0f1e2d3c" * 16,
    "csrf_token": "a1b2c3",
    "cart": {"items": [1, 2, 3], "total": 12.5, "coupon": None},
    "avatar": b"\x89PNG",
    "big": 2**64 - 1,
    "neg": -(2**63),
}
ENCODER = msgspec.msgpack.Encoder()


class Gadget:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (subprocess.call, (["touch", str(self.path)],))


def nested(depth: int) -> bytes:
    return b"\x91" * (depth - 1) + b"\x90"


def test_a_flask_session_written_by_msgspec_reads_back_equal() -> None:
    assert reader.loads(ENCODER.encode(FLASK_SESSION)) == FLASK_SESSION


def test_flashes_stored_as_tuples_read_as_lists() -> None:
    data = ENCODER.encode({"_flashes": [("message", "Signed in."), ("error", "x")]})
    assert reader.loads(data) == {"_flashes": [["message", "Signed in."], ["error", "x"]]}


def test_hand_written_messagepack_of_every_width_reads() -> None:
    # fixmap{"a": uint16 300}, then the str8/array16/map16/float32/int8 forms.
    assert reader.loads(b"\x81\xa1a\xcd\x01\x2c") == {"a": 300}
    assert reader.loads(b"\xd9\x03abc") == "abc"
    assert reader.loads(b"\xdc\x00\x02\xc0\xc3") == [None, True]
    assert reader.loads(b"\xde\x00\x01\xa1k\xc2") == {"k": False}
    assert reader.loads(b"\xca" + struct.pack(">f", 1.5)) == 1.5
    assert reader.loads(b"\xd0\x80") == -128
    assert reader.loads(b"\xc4\x02\x00\xff") == b"\x00\xff"


def test_a_lone_0x80_is_the_empty_map_not_a_pickle() -> None:
    assert reader.loads(b"\x80") == {}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pickled_session_from_older_flask_session_is_read_by_the_pickle_reader(protocol: int) -> None:
    session = {"_permanent": True, "_user_id": "42", "_fresh": False}
    assert reader.loads(pickle.dumps(session, protocol=protocol)) == session


def test_a_pickle_gadget_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(Refused, match="STACK_GLOBAL"):
        reader.loads(pickle.dumps(Gadget(marker), protocol=4))
    with pytest.raises(Refused, match="GLOBAL"):
        reader.loads(pickle.dumps(os.system, protocol=2))
    assert not marker.exists()


def test_extension_types_and_timestamps_are_refused() -> None:
    when = datetime.datetime(2026, 12, 3, tzinfo=datetime.UTC)
    for data in [
        ENCODER.encode({"at": when}),
        ENCODER.encode(msgspec.msgpack.Ext(5, b"xyz")),
        b"\xd4\x01\x00",
        b"\xc7\x00\x02",
    ]:
        with pytest.raises(Refused, match="extension type"):
            reader.loads(data)


def test_integer_keys_are_kept_and_other_keys_refused() -> None:
    assert reader.loads(ENCODER.encode({1: "a", -2: "b"})) == {1: "a", -2: "b"}
    for data in [b"\x81\xc0\x01", b"\x81\xc3\x01", b"\x81\xca\x00\x00\x00\x00\x01", b"\x81\xc4\x01k\x01"]:
        with pytest.raises(Refused, match="dict key of type"):
            reader.loads(data)


@pytest.mark.parametrize(
    ("data", "at"),
    [
        (b"\x81\x92\x01\x02\x03", "array at byte 1"),  # {[1, 2]: 3}
        (b"\x81\x90\x03", "array at byte 1"),
        (b"\x81\x80\x03", "map at byte 1"),  # msgspec would refuse an unhashable key itself
        (b"\x82\xa1a\x01\xdc\x00\x01\x01\x02", "array at byte 4"),  # the second key, an array 16
        (b"\x91\x81\x01\x81\x91\x01\x02", "array at byte 4"),  # a key of a map inside a map value
    ],
)
def test_an_array_or_map_as_a_map_key_is_refused_by_the_scan_before_decoding(data: bytes, at: str) -> None:
    # msgspec decodes an array key to a tuple, whose hash can be inverted: such keys could all collide.
    with pytest.raises(Refused, match=f"MessagePack {at} is a map key"):
        reader._scan(data)


def test_arrays_and_maps_as_map_values_and_array_items_still_read() -> None:
    value = {"a": [[1], {"b": [2]}], 1: {"c": {}}}
    assert reader.loads(ENCODER.encode(value)) == value


def test_invalid_utf8_strings_and_unused_bytes_are_refused() -> None:
    for data in [b"\xa2\xed\xa0", b"\xa1\xff", b"\xc1", ENCODER.encode("x") + b"\xc0"]:
        with pytest.raises(Refused):
            reader.loads(data)


def test_truncation_at_every_offset_is_refused() -> None:
    data = ENCODER.encode(FLASK_SESSION)
    for cut in range(len(data)):
        with pytest.raises(Refused):
            reader.loads(data[:cut])


def test_huge_declared_lengths_and_counts_are_refused_before_decoding() -> None:
    started = time.perf_counter()
    for data in [
        b"\xdd\xff\xff\xff\xff\xc0",
        b"\xdf\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xffab",
        b"\xc6\x7f\x00\x00\x00",
    ]:
        with pytest.raises(Refused, match="declares"):
            reader.loads(data)
    assert time.perf_counter() - started < 0.1


def test_nesting_is_read_to_the_bound_and_refused_past_it() -> None:
    assert reader.loads(nested(MAX_DEPTH)) is not None
    with pytest.raises(Refused, match=f"deeper than {MAX_DEPTH}"):
        reader.loads(nested(MAX_DEPTH + 1))
    with pytest.raises(Refused, match="deeper"):
        reader.loads(nested(MAX_INPUT_BYTES))  # far past msgspec's own recursion limit: never reached


def test_element_count_is_read_to_the_bound_and_refused_past_it() -> None:
    assert reader.loads(ENCODER.encode([None] * (MAX_ELEMENTS - 1))) == [None] * (MAX_ELEMENTS - 1)
    with pytest.raises(Refused, match=f"more than {MAX_ELEMENTS} values"):
        reader.loads(ENCODER.encode([None] * MAX_ELEMENTS))
    with pytest.raises(Refused, match="items"):
        reader.loads(ENCODER.encode([None] * 30_000))


def test_input_over_the_size_bound_is_refused() -> None:
    with pytest.raises(Refused, match="over the"):
        reader.loads(ENCODER.encode("x" * MAX_INPUT_BYTES))


def test_what_flask_session_itself_writes_reads_back() -> None:
    flask = pytest.importorskip("flask", reason="Flask is not installed")
    base = pytest.importorskip("flask_session.base", reason="Flask-Session is not installed")
    serializer = base.MsgSpecSerializer(app=flask.Flask(__name__), format="msgpack")
    session = base.ServerSideSession({"_user_id": "42", "_fresh": True, "_id": "f" * 128}, sid="s", permanent=True)
    assert reader.loads(serializer.encode(session)) == {
        "_user_id": "42",
        "_fresh": True,
        "_id": "f" * 128,
        "_permanent": True,
    }
    # Flask-Session's own decoder agrees with ours on what it wrote.
    assert serializer.decode(serializer.encode(session)) == reader.loads(serializer.encode(session))
