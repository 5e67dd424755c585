"""Fuzzing the stored-format readers of sidecar.sources.formats: a plain value or Refused, quickly, whatever the bytes.

For every reader (pickle, PHP value, PHP session under both handlers, MessagePack, JSON, Ruby Marshal), Hypothesis
feeds random bytes and mutations of valid encodings (byte flips, inserted tokens that name classes or declare
huge lengths, deletions, truncations, splices of two encodings, a chunk repeated up to past the size bound).
Properties of every input:

* the reader returns or raises ``Refused``: any other exception is a crash;
* what it returns is plain: dict (str or int keys), list, str (UTF-8 encodable), bytes, int (64 bits), float,
  bool, None, nested at most MAX_DEPTH deep with at most MAX_ELEMENTS values once expanded;
* it answers within PER_EXAMPLE_SECONDS (Hypothesis's deadline as well, with room for a shared machine).

Plain values drawn by Hypothesis and written by the real writers (``pickle.dumps``, msgspec, ``json.dumps``)
must also read back equal. The module prints, per reader, the examples run and the slowest one.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats import json as json_reader
from sidecar.sources.formats import marshal as marshal_reader
from sidecar.sources.formats import msgpack as msgpack_reader
from sidecar.sources.formats import php as php_reader
from sidecar.sources.formats import pickle as pickle_reader

PER_EXAMPLE_SECONDS = 1.0
FUZZ = settings(
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

READERS: dict[str, Callable[[bytes], object]] = {
    "pickle": pickle_reader.loads,
    "php": php_reader.loads,
    "php-session": lambda data: php_reader.loads_session(data, "php"),
    "php_serialize-session": lambda data: php_reader.loads_session(data, "php_serialize"),
    "msgpack": msgpack_reader.loads,
    "json": json_reader.loads,
    "marshal": marshal_reader.loads,
}

_SESSION = {"_auth_user_id": "42", "roles": ["admin", "dev"], "n": 7, "ratio": 0.5, "ok": True, "none": None}
_PHP_SESSION = b'user_id|i:42;roles|a:2:{i:0;s:5:"admin";i:1;s:3:"dev";}name|s:4:"Zo\xc3\xab";ratio|d:0.1;'
_PHP_VALUE = (
    b'a:6:{s:7:"user_id";i:42;s:5:"roles";a:2:{i:0;s:5:"admin";i:1;s:3:"dev";}i:7;d:-INF;'
    b's:1:"b";b:1;s:1:"n";N;s:1:"x";s:2:"\xff\x00";}'
)
_RAILS = (
    b'\x04\x08{\x08I"\x0fsession_id\x06:\x06ETI"\x08abc\x06;\x00TI"\x19warden.user.user.key\x06;\x00T'
    b'[\x07[\x06i\x06I"\x0d$2a$salt\x06;\x00TI"\x10_csrf_token\x06;\x00TI"\x08tok\x06;\x00T'
)
# Marshal.dump([s, s, :"é", :E, "x".b, 1.5, 2**40, -129, {1=>[]}, nil, true]) with s = "shared", from Ruby 3.1.
_MARSHAL_MIXED = (
    b'\x04\x08[\x10I"\x0bshared\x06:\x06ET@\x06I:\x07\xc3\xa9\x06;\x00T;\x00"\x06xf\x081.5'
    b"l+\x08\x00\x00\x00\x00\x00\x01i\xff\x7f{\x06i\x06[\x000T"
)
SEEDS: dict[str, list[bytes]] = {
    "pickle": [pickle.dumps(_SESSION, protocol=p) for p in (2, 3, 4, 5)]
    + [pickle.dumps({"t": (1, 2), "s": {3}, "b": b"\x00"}, protocol=5)],
    "php": [_PHP_VALUE, b"d:1.0E+25;", b's:3:"abc";'],
    "php-session": [_PHP_SESSION],
    "php_serialize-session": [
        b'a:3:{s:7:"user_id";i:42;s:5:"roles";a:2:{i:0;s:5:"admin";i:1;s:3:"dev";}s:5:"ratio";d:0.1;}'
    ],
    "msgpack": [msgspec.msgpack.encode(_SESSION), msgspec.msgpack.encode([b"\x00", -(2**63), 2**64 - 1, 1e300])],
    "json": [json.dumps(_SESSION).encode(), b'{"a":[{"b":"\\u00e9\\"]}"}],"c":-1.5e3}'],
    "marshal": [_RAILS, _MARSHAL_MIXED],
}
assert all(name in SEEDS for name in READERS)

# Tokens that steer a parser into its refusals: class-naming tags, references, big lengths, escapes, brackets.
_TOKENS = [
    b"\x00", b"\xff", b"\x7f", b"\x80", b"\xc1", b"9999999999", b"4294967295", b":", b";", b"{", b"}", b"[", b"]",
    b'"', b"\\", b"|", b"a:1:{", b'O:8:"stdClass":0:{}', b"r:1;", b"R:1;", b"E:3:\"A:B\";", b"i:99999999999999999999;",
    b"d:NAN;", b"@\x00", b"@\x7f", b";\x00", b"o:\x0bObject\x00", b"u:", b"l+\x7f", b"I", b"\x91", b"\xdd\xff\xff",
    b"\xc7\x01\x05", b"\xd6\xff", b"cos\nsystem\n", b"\x93", b"R", b"b", b"r\xff\xff\xff\x7f", b"(", b"NaN",
    b"1e999", b"\\ud800", b"\xed\xa0\x80", b"\xef\xbb\xbf", b")" + b"\x85" * 40, b"\x94h\x00", b"(" * 40,
    b"\x8a\x09" + (9 * (2**61 - 1)).to_bytes(9, "little"), b"\x81\x91\x01", b"\x81\x80", b"\x85", b"\x8f",
]  # fmt: skip

# One short unit repeated up to the size bound: the shapes that make a scan quadratic. Before the JSON scan
# matched each string once, 64 KiB of \" took 35 s (every quote rescanned the unterminated rest).
_UNITS = [
    b'\\"', b'"', b"\\", b'"\\', b"[", b"{", b'{"a":', b'["', b'"a":', b"a:1:{", b's:1:"', b"\x91", b"\x81\x91",
    b"(", b")\x85", b"}(", b"\x8a\x09" + (9 * (2**61 - 1)).to_bytes(9, "little") + b"N", b'I"\x06', b"[\x06", b"@\x00",
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    seeds = SEEDS[name]
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        size = len(data)
        at = draw(st.integers(0, size))
        op = draw(st.sampled_from(["flip", "insert", "token", "delete", "truncate", "repeat", "splice"]))
        if op == "flip" and size:
            data[min(at, size - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(_TOKENS))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        elif op == "repeat":
            chunk = bytes(data[at : at + draw(st.integers(1, 12))]) or b"["
            times = draw(
                st.sampled_from([2, 10, 1000, MAX_INPUT_BYTES // len(chunk), MAX_INPUT_BYTES // len(chunk) + 2])
            )
            data[at:at] = chunk * times
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data = data[:at] + other[draw(st.integers(0, len(other))) :]
    return bytes(data)


class Stats:
    def __init__(self) -> None:
        self.examples: dict[str, int] = dict.fromkeys(READERS, 0)
        self.slowest: dict[str, float] = dict.fromkeys(READERS, 0.0)
        self.refused: dict[str, int] = dict.fromkeys(READERS, 0)


STATS = Stats()


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print("\nformats fuzz: reader, examples, refused, slowest example (ms)")
    for name in READERS:
        print(f"  {name:24} {STATS.examples[name]:6} {STATS.refused[name]:6} {STATS.slowest[name] * 1000:9.2f}")


def _check_plain(value: object) -> None:
    """Fails unless ``value`` is a plain value within the bounds (shared references counted each time)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        assert seen <= MAX_ELEMENTS, "more values than MAX_ELEMENTS"
        if isinstance(item, dict):
            assert type(item) is dict and depth <= MAX_DEPTH
            for key, child in item.items():
                assert type(key) in (str, int), f"key of type {type(key).__name__}"
                _check_scalar(key)
                stack.append((child, depth + 1))
        elif isinstance(item, list):
            assert type(item) is list and depth <= MAX_DEPTH
            stack.extend((child, depth + 1) for child in item)
        else:
            _check_scalar(item)


def _check_scalar(item: object) -> None:
    assert item is None or type(item) in (str, bytes, int, float, bool), f"a {type(item).__name__}"
    if type(item) is str:
        item.encode("utf-8")
    if type(item) is int:
        assert item.bit_length() <= 64


def run(name: str, data: bytes) -> object:
    """Read ``data`` with the named reader under the properties; the value read, or None when refused."""
    started = time.perf_counter()
    try:
        value = READERS[name](data)
    except Refused:
        value = refused = None
    else:
        refused = False
    elapsed = time.perf_counter() - started
    STATS.examples[name] += 1
    STATS.refused[name] += refused is None
    STATS.slowest[name] = max(STATS.slowest[name], elapsed)
    assert elapsed < PER_EXAMPLE_SECONDS, f"{name} took {elapsed:.3f}s on {len(data)} bytes"
    if refused is False:
        _check_plain(value)
    return value


@pytest.mark.parametrize("name", list(READERS))
@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=600))
@example(data=b"")
@example(data=b"\x80")
def test_random_bytes_give_a_plain_value_or_refused(name: str, data: bytes) -> None:
    run(name, data)


@pytest.mark.parametrize("name", list(READERS))
@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_mutated_valid_encodings_give_a_plain_value_or_refused(name: str, data: st.DataObject) -> None:
    run(name, data.draw(mutated(name)))


@pytest.mark.parametrize("name", list(READERS))
@settings(FUZZ, max_examples=40)
@given(
    prefix=st.sampled_from([b"", b"[", b'{"a":', b"\x80\x04}(", b"\x04\x08{", b"a:1:{", b"\xdf\x00\x00\x10\x00"]),
    unit=st.sampled_from(_UNITS),
    share=st.sampled_from([4, 2, 1]),
)
@example(prefix=b"", unit=b'\\"', share=1)
def test_one_unit_repeated_up_to_the_size_bound_is_answered_quickly(
    name: str, prefix: bytes, unit: bytes, share: int
) -> None:
    run(name, prefix + unit * ((MAX_INPUT_BYTES // share - len(prefix)) // len(unit)))


def test_every_seed_reads_as_a_plain_value() -> None:
    # Mutations start from valid encodings: a seed that is refused would leave the accepting paths unfuzzed.
    for name, seeds in SEEDS.items():
        for seed in seeds:
            _check_plain(READERS[name](seed))


# Plain values as every writer can encode them: finite floats, 64-bit ints, str keys.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
plain_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=40,
)
_WRITERS: dict[str, Callable[[object], bytes]] = {
    "pickle": lambda value: pickle.dumps(value, protocol=5),
    "msgpack": msgspec.msgpack.encode,
    "json": lambda value: json.dumps(value, allow_nan=False).encode(),
}


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@pytest.mark.parametrize("writer", list(_WRITERS))
@settings(FUZZ, max_examples=300)
@given(value=plain_values)
def test_plain_values_written_by_the_real_writer_read_back_equal(writer: str, value: object) -> None:
    assume(_depth(value) <= MAX_DEPTH)
    assert run(writer, _WRITERS[writer](value)) == value
