"""The Ruby Marshal reader: a Rails session hash and the primitives in it; everything that names a class refused.

The byte strings below were written by Ruby 3.1's ``Marshal.dump``; the last tests ask a local ``ruby`` to write
them again when one is installed.
"""

from __future__ import annotations

import base64
import json
import math
import random
import shutil
import subprocess
import time

import pytest

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats import marshal as reader

# Marshal.dump({"session_id"=>"abc", "warden.user.user.key"=>[[1], "$2a$salt"], "_csrf_token"=>"tok"})
RAILS_SESSION = (
    b'\x04\x08{\x08I"\x0fsession_id\x06:\x06ETI"\x08abc\x06;\x00TI"\x19warden.user.user.key\x06;\x00T'
    b'[\x07[\x06i\x06I"\x0d$2a$salt\x06;\x00TI"\x10_csrf_token\x06;\x00TI"\x08tok\x06;\x00T'
)
# Marshal.dump of each value, from Ruby.
PRIMITIVES: list[tuple[bytes, object]] = [
    (b'\x04\x08I"\x08abc\x06:\x06ET', "abc"),
    (b"\x04\x08[\x08i\x060T", [1, None, True]),
    (b"\x04\x08{\x06:\x06ai\x06", {"a": 1}),
    (b"\x04\x08i\x02,\x01", 300),
    (b"\x04\x08i\xff\x7f", -129),
    (b"\x04\x08i\x00", 0),
    (b"\x04\x08F", False),
    (b"\x04\x08f\x081.5", 1.5),
    (b"\x04\x08f\x0a1e100", 1e100),
    (b"\x04\x08f\x0b0.0001", 0.0001),
    (b"\x04\x08f\x07-0", -0.0),
    (b"\x04\x08l+\x08\x00\x00\x00\x00\x00\x01", 2**40),
    (b"\x04\x08l-\x09\xff\xff\xff\xff\xff\xff\xff\xff", -(2**64 - 1)),
    (b"\x04\x08I:\x07\xc3\xa9\x06:\x06ET", "é"),
    (b"\x04\x08[\x07I:\x07\xc3\xa9\x06:\x06ET;\x00", ["é", "é"]),
    (b'\x04\x08"\x06x', b"x"),  # "x".b: a binary string
    (b'\x04\x08I"\x06\xe9\x06:\x0dencoding"\x0fISO-8859-1', b"\xe9"),  # another encoding: its bytes
    (b'\x04\x08[\x07I"\x0bshared\x06:\x06ET@\x06', ["shared", "shared"]),  # the same object twice: a link
    # [1.5, 1.5, 2**64-1, 2**64-1, "é", "ü"] (both ISO-8859-1): the float, the bignum and the second string's
    # encoding name are written as links to the first ones.
    (
        b"\x04\x08[\x0bf\x081.5@\x06l+\x09\xff\xff\xff\xff\xff\xff\xff\xffl+\x09\xff\xff\xff\xff\xff\xff\xff\xff"
        b'I"\x06\xe9\x06:\x0dencoding"\x0fISO-8859-1I"\x06\xfc\x06;\x00@\x0a',
        [1.5, 1.5, 2**64 - 1, 2**64 - 1, b"\xe9", b"\xfc"],
    ),
    (b'\x04\x08{\x06I"\x0aflash\x06:\x06ET{\x07I"\x0cdiscard\x06;\x00T[\x00I"\x0cflashes\x06;\x00T{\x00', None),
]
RUBY = shutil.which("ruby")


def array_of(items: bytes, count: int) -> bytes:
    # Packed counts for 0 < count < 65536, as Ruby's w_long writes them.
    packed = (
        bytes([count + 5])
        if count < 123
        else b"\x01" + bytes([count])
        if count < 256
        else b"\x02" + count.to_bytes(2, "little")
    )
    return b"[" + packed + items


def test_a_rails_session_with_devise_reads_as_plain_values() -> None:
    assert reader.loads(RAILS_SESSION) == {
        "session_id": "abc",
        "warden.user.user.key": [[1], "$2a$salt"],
        "_csrf_token": "tok",
    }


@pytest.mark.parametrize(("data", "expected"), [p for p in PRIMITIVES if p[1] is not None])
def test_each_primitive_reads_as_ruby_wrote_it(data: bytes, expected: object) -> None:
    value = reader.loads(data)
    assert value == expected
    assert type(value) is type(expected)


def test_non_finite_floats_and_a_flash_hash_read() -> None:
    value = reader.loads(b"\x04\x08[\x08f\x08inff\x09-inff\x08nan")
    assert isinstance(value, list)
    assert value[:2] == [math.inf, -math.inf]
    assert math.isnan(value[2])
    flash = next(data for data, expected in PRIMITIVES if expected is None)
    assert reader.loads(flash) == {"flash": {"discard": [], "flashes": {}}}


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"\x04\x08o:\x0bObject\x00", "an object"),
        (b"\x04\x08S:\x06S\x06:\x06ai\x06", "Struct"),
        (b"\x04\x08U:\x06Ui\x06", "marshal_dump"),
        (b"\x04\x08Iu:\x09Time\x0d \x80\x11\x80\x00\x00\x00\x00\x07:\x0boffseti\x00", "custom-dumped"),
        (b"\x04\x08C:\x06H{\x00", "user subclass"),
        (b'\x04\x08}\x06I"\x06a\x06:\x06ETi\x06i\x0a', "default value"),
        (b"\x04\x08I/\x06a\x00\x06:\x06EF", "Regexp"),
        (b"\x04\x08c\x0bString", "a class"),
        (b"\x04\x08m\x0bKernel", "a module"),
        (b"\x04\x08M\x0bKernel", "class or module"),
        (b"\x04\x08d:\x06Xi\x06", "data object"),
        (b"\x04\x08e:\x0fComparableo:\x0bObject\x00", "extended"),
        (b"\x04\x08[\x06o:\x0bObject\x00", "an object"),
        (b'\x04\x08{\x06I"\x06k\x06:\x06ETo:\x0bObject\x00', "an object"),
    ],
)
def test_everything_that_names_a_class_is_refused_by_name(data: bytes, named: str) -> None:
    with pytest.raises(Refused, match=named):
        reader.loads(data)


def test_instance_variables_other_than_the_encoding_are_refused() -> None:
    with pytest.raises(Refused, match="2 instance variables"):
        reader.loads(b'\x04\x08I"\x06x\x07:\x06ET:\x0a@evili\x06')
    with pytest.raises(Refused, match="'@evil'"):
        reader.loads(b'\x04\x08I"\x06x\x06:\x0a@evili\x06')
    with pytest.raises(Refused, match="not T or F"):
        reader.loads(b'\x04\x08I"\x06x\x06:\x06Ei\x06')


def test_links_to_an_unfinished_container_or_an_unknown_object_are_refused() -> None:
    with pytest.raises(Refused, match="contains it"):
        reader.loads(b"\x04\x08[\x06@\x00")  # a = []; a << a
    with pytest.raises(Refused, match="not read"):
        reader.loads(b"\x04\x08[\x06@\x0a")
    with pytest.raises(Refused, match="symbol 3"):
        reader.loads(b"\x04\x08;\x08")


def test_links_count_what_they_repeat_against_the_bounds() -> None:
    # One array of 100 nils, then 200 links to it: 20,000 values once expanded, in about 500 bytes.
    inner = array_of(b"0" * 100, 100)
    bomb = b"\x04\x08" + array_of(inner + b"@\x06" * 200, 201)
    with pytest.raises(Refused, match=f"more than {MAX_ELEMENTS} values"):
        reader.loads(bomb)
    # A link to a deep array placed deep: its height counts.
    deep = b"[\x06" * 20 + b"[\x00"
    with pytest.raises(Refused, match=r"link .* nests deeper"):
        reader.loads(b"\x04\x08[\x07" + deep + b"[\x06" * 15 + b"@\x06")


def test_hash_keys_must_be_strings_symbols_or_integers_and_unique() -> None:
    assert reader.loads(b"\x04\x08{\x06i\x06i\x07") == {1: 2}
    with pytest.raises(Refused, match="list key"):
        reader.loads(b"\x04\x08{\x06[\x00i\x06")
    with pytest.raises(Refused, match="NoneType key"):
        reader.loads(b"\x04\x08{\x060i\x06")
    with pytest.raises(Refused, match="'a' twice"):
        reader.loads(b'\x04\x08{\x07I"\x06a\x06:\x06ETi\x06:\x06ai\x07')  # "a" and :a


def test_a_refusal_quotes_a_long_duplicate_key_or_instance_variable_cut_short() -> None:
    size, name = b"\x02\x30\x75", b"K" * 30_000  # 30,000 as Marshal writes a long length
    twice = b'\x04\x08{\x07I"' + size + name + b"\x06:\x06ETi\x06:" + size + name + b"i\x07"  # the string, the symbol
    odd_ivar = b'\x04\x08I"\x06a\x06:' + size + name + b"i\x06"
    for data, reason in [(twice, "twice"), (odd_ivar, "only E and encoding")]:
        with pytest.raises(Refused, match=f"'KKKK.*{reason}") as refused:
            reader.loads(data)
        assert len(str(refused.value)) < 200


def test_the_header_must_be_marshal_4_8() -> None:
    for data in [b"", b"\x04", b"\x04\x07i\x06", b"\x03\x08i\x06", b"{}"]:
        with pytest.raises(Refused, match=r"not Ruby Marshal 4\.8"):
            reader.loads(data)


def test_truncation_at_every_offset_is_refused() -> None:
    for cut in range(len(RAILS_SESSION)):
        with pytest.raises(Refused):
            reader.loads(RAILS_SESSION[:cut])


def test_bytes_after_the_value_and_malformed_numbers_are_refused() -> None:
    for data in [RAILS_SESSION + b"0", b"\x04\x08f\x061x", b"\x04\x08f\x00", b"\x04\x08l*\x06\x01\x00"]:
        with pytest.raises(Refused):
            reader.loads(data)


def test_bignums_over_64_bits_are_refused() -> None:
    with pytest.raises(Refused, match="64 bits"):
        reader.loads(b"\x04\x08l+\x0a\x00\x00\x00\x00\x00\x00\x00\x00@\x00")  # 2**70


def test_huge_declared_lengths_and_counts_are_refused_before_reading() -> None:
    started = time.perf_counter()
    for data in [
        b'\x04\x08"\x04\xff\xff\xff\x7fx',
        b"\x04\x08[\x04\xff\xff\xff\x7f0",
        b"\x04\x08{\x04\xff\xff\xff\x7f",
    ]:
        with pytest.raises(Refused, match="declares"):
            reader.loads(data)
    assert time.perf_counter() - started < 0.1


def test_nesting_is_read_to_the_bound_and_refused_past_it() -> None:
    assert reader.loads(b"\x04\x08" + b"[\x06" * (MAX_DEPTH - 1) + b"[\x00") is not None
    with pytest.raises(Refused, match=f"deeper than {MAX_DEPTH}"):
        reader.loads(b"\x04\x08" + b"[\x06" * MAX_DEPTH + b"[\x00")
    with pytest.raises(Refused, match="deeper"):
        reader.loads(b"\x04\x08" + b"[\x06" * 30_000)


def test_element_count_is_read_to_the_bound_and_refused_past_it() -> None:
    assert reader.loads(b"\x04\x08" + array_of(b"0" * (MAX_ELEMENTS - 1), MAX_ELEMENTS - 1)) == [None] * (
        MAX_ELEMENTS - 1
    )
    with pytest.raises(Refused, match=f"more than {MAX_ELEMENTS} values"):
        reader.loads(b"\x04\x08" + array_of(b"0" * MAX_ELEMENTS, MAX_ELEMENTS))


def test_input_over_the_size_bound_is_refused() -> None:
    with pytest.raises(Refused, match="over the"):
        reader.loads(b"\x04\x08" + array_of(b"0" * MAX_INPUT_BYTES, 65535))


def _ruby(code: str) -> list[bytes]:
    assert RUBY is not None
    out = subprocess.run([RUBY, "-e", code], capture_output=True, check=True, timeout=60).stdout
    return [bytes.fromhex(line) for line in out.decode().split()]


@pytest.mark.skipif(RUBY is None, reason="no ruby installed: the byte strings above stand in for it")
def test_what_a_real_ruby_dumps_reads_back() -> None:
    code = """
    s = "shared"
    vals = [{"session_id" => "abc", "warden.user.user.key" => [[1], "$2a$salt"], "_csrf_token" => "tok"},
            {"flash" => {"discard" => [], "flashes" => {"notice" => "Signed in."}}, "n" => 2**62, :sym => -1.5},
            [s, s, :"é", :"é", "x".b, nil, true, false, 2**64 - 1, -(2**63)],
            [1.5, 1.5, 2**40, 2**40, "é".encode("ISO-8859-1"), "ü".encode("ISO-8859-1"), "a".encode("US-ASCII")]]
    vals.each { |v| puts Marshal.dump(v).unpack1("H*") }
    """
    session, flash, mixed, links = (reader.loads(data) for data in _ruby(code))
    assert session == {"session_id": "abc", "warden.user.user.key": [[1], "$2a$salt"], "_csrf_token": "tok"}
    assert flash == {"flash": {"discard": [], "flashes": {"notice": "Signed in."}}, "n": 2**62, "sym": -1.5}
    assert mixed == ["shared", "shared", "é", "é", b"x", None, True, False, 2**64 - 1, -(2**63)]
    assert links == [1.5, 1.5, 2**40, 2**40, b"\xe9", b"\xfc", "a"]


@pytest.mark.skipif(RUBY is None, reason="no ruby installed: the byte strings above stand in for it")
def test_what_a_real_ruby_dumps_for_objects_is_refused() -> None:
    code = """
    class H < Hash; end
    S = Struct.new(:a)
    h = Hash.new(5); h["a"] = 1
    o = Object.new; o.extend(Comparable)
    a = []; a << a
    [Object.new, S.new(1), Time.at(0), H.new, h, /a/, String, Kernel, o, a, 2**70, 1r, 1i].each do |v|
      puts Marshal.dump(v).unpack1("H*")
    end
    """
    dumps = _ruby(code)
    assert len(dumps) == 13
    for data in dumps:
        with pytest.raises(Refused):
            reader.loads(data)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 122, -123, 255, -256, 2**30, -(2**30) - 1, 2**62, -(2**63), 2**64 - 1])
    if kind == 2:
        return rng.choice([0.5, -0.0, 1e100, 1e-7, 123456.789, rng.uniform(-1e6, 1e6)])
    if kind in (3, 4, 5):
        return "".join(rng.choice("aZ0 _:@;\"'\\é€😀\x00") for _ in range(rng.randrange(8)))
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["session_id", "user", "warden.user.user.key", "", "é", "flash", "_csrf_token"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


@pytest.mark.skipif(RUBY is None, reason="no ruby installed: the byte strings above stand in for it")
def test_random_values_dumped_by_a_real_ruby_read_back_equal() -> None:
    # Ruby parses each JSON line and dumps what it holds (its JSON parser shares equal keys: links get exercised).
    assert RUBY is not None
    rng = random.Random(20261203)
    values = [_random_value(rng) for _ in range(300)]
    lines = "\n".join(json.dumps(value) for value in values) + "\n"
    code = 'require "json"; STDIN.each_line { |line| puts [Marshal.dump(JSON.parse(line))].pack("m0") }'
    out = subprocess.run([RUBY, "-e", code], input=lines.encode(), capture_output=True, check=True, timeout=60)
    dumps = out.stdout.decode().split()
    assert len(dumps) == len(values)
    for value, dump in zip(values, dumps, strict=True):
        assert reader.loads(base64.b64decode(dump)) == value, dump
