"""The PHP reader: sessions as PHP's php and php_serialize handlers write them, and every construct that builds an
object or a reference refused.

The byte strings below were written by PHP 8.2 (``serialize`` / ``session_encode``); the last tests ask a local
``php`` to write them again when one is installed.
"""

from __future__ import annotations

import base64
import json
import math
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sidecar.sources.formats import MAX_DEPTH, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats import php as reader

# session_encode() of the same $_SESSION under each handler.
SESSION_VARS: dict[str, object] = {
    "user_id": 42,
    "roles": ["admin", "dev"],
    "name": "Zoë",
    "ratio": 0.1,
    "flags": {"a": True, 7: None},
}
PHP_HANDLER = (
    b'user_id|i:42;roles|a:2:{i:0;s:5:"admin";i:1;s:3:"dev";}name|s:4:"Zo\xc3\xab";ratio|d:0.1;'
    b'flags|a:2:{s:1:"a";b:1;i:7;N;}'
)
PHP_SERIALIZE_HANDLER = (
    b'a:5:{s:7:"user_id";i:42;s:5:"roles";a:2:{i:0;s:5:"admin";i:1;s:3:"dev";}s:4:"name";s:4:"Zo\xc3\xab";'
    b's:5:"ratio";d:0.1;s:5:"flags";a:2:{s:1:"a";b:1;i:7;N;}}'
)
# serialize([0.1, -0.0, 1e25, INF, -INF, NAN, 1.5, "héllo", true, null, PHP_INT_MAX, PHP_INT_MIN])
SCALARS = (
    b'a:12:{i:0;d:0.1;i:1;d:-0;i:2;d:1.0E+25;i:3;d:INF;i:4;d:-INF;i:5;d:NAN;i:6;d:1.5;i:7;s:6:"h\xc3\xa9llo";'
    b"i:8;b:1;i:9;N;i:10;i:9223372036854775807;i:11;i:-9223372036854775808;}"
)
PHP = shutil.which("php")


def nested(depth: int) -> bytes:
    return b"a:1:{i:0;" * depth + b"N;" + b"}" * depth


def test_the_php_handler_reads_each_variable() -> None:
    assert reader.loads_session(PHP_HANDLER, "php") == SESSION_VARS


def test_the_php_serialize_handler_reads_the_session_array() -> None:
    assert reader.loads_session(PHP_SERIALIZE_HANDLER, "php_serialize") == SESSION_VARS


def test_scalars_read_with_php_float_spellings_and_64_bit_integers() -> None:
    value = reader.loads(SCALARS)
    assert isinstance(value, list)
    assert value[:5] == [0.1, -0.0, 1e25, math.inf, -math.inf]
    assert math.isnan(value[5])
    assert value[6:] == [1.5, "héllo", True, None, 2**63 - 1, -(2**63)]


def test_strings_are_str_when_utf8_and_bytes_otherwise_and_lengths_count_bytes() -> None:
    assert reader.loads(b's:2:"\xc3\xa9";') == "é"
    assert reader.loads(b's:2:"\xff\x00";') == b"\xff\x00"
    assert reader.loads(b's:0:"";') == ""
    assert reader.loads(b's:4:"a";b";') == 'a";b'  # quotes inside are just bytes: the length decides
    with pytest.raises(Refused, match="does not end with"):
        reader.loads(b's:1:"\xc3\xa9";')  # a character count instead of a byte count


def test_lists_become_lists_and_other_arrays_dicts_with_php_key_rules() -> None:
    assert reader.loads(b"a:0:{}") == []
    assert reader.loads(b"a:2:{i:1;N;i:0;N;}") == {1: None, 0: None}  # out of order: not a list
    # PHP turns the key "7" into the integer 7 but keeps "07" and "-0" as strings.
    assert reader.loads(b'a:4:{s:1:"7";i:1;s:2:"07";i:2;s:2:"-0";i:3;s:2:"-5";i:4;}') == {
        7: 1,
        "07": 2,
        "-0": 3,
        -5: 4,
    }


def test_a_key_repeated_in_one_array_is_refused_even_when_spelled_differently() -> None:
    with pytest.raises(Refused, match="twice"):
        reader.loads(b'a:2:{s:4:"role";s:4:"user";s:4:"role";s:5:"admin";}')
    with pytest.raises(Refused, match="twice"):
        reader.loads(b'a:2:{i:1;N;s:1:"1";N;}')
    with pytest.raises(Refused, match="twice"):
        reader.loads_session(b"a|i:1;a|i:2;", "php")


def test_a_refusal_quotes_a_long_duplicate_key_or_variable_cut_short() -> None:
    key = b"K" * 30_000
    for data, read in [
        (b'a:2:{s:30000:"' + key + b'";N;s:30000:"' + key + b'";N;}', reader.loads),
        (key + b"|i:1;" + key + b"|i:2;", lambda data: reader.loads_session(data, "php")),
    ]:
        with pytest.raises(Refused, match=r"'KKKK.*twice") as refused:
            read(data)
        assert len(str(refused.value)) < 200


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b'O:8:"stdClass":0:{}', "object"),
        (b'a:1:{i:0;O:8:"stdClass":1:{s:1:"a";i:1;}}', "object"),
        (b'C:11:"ArrayObject":21:{x:i:0;a:0:{};m:a:0:{}}', "custom-serialized"),
        (b"a:2:{i:0;i:1;i:1;r:2;}", "reference"),
        (b"a:2:{i:0;i:1;i:1;R:2;}", "reference"),
        (b'E:11:"Suit:Hearts";', "enum"),
        (b'S:1:"\\61";', "escaped string"),
        (b'U:1:"a";', "tag b'U'"),
        (b"x:1;", "tag b'x'"),
    ],
)
def test_objects_references_enums_and_unknown_tags_are_refused_by_name(data: bytes, named: str) -> None:
    with pytest.raises(Refused, match=named):
        reader.loads(data)


def test_keys_other_than_int_and_string_are_refused() -> None:
    for key in [b"d:1.5;", b"b:1;", b"N;", b"a:0:{}"]:
        with pytest.raises(Refused, match="neither i: nor s:"):
            reader.loads(b"a:1:{" + key + b"i:1;}")


def test_igbinary_and_other_handlers_are_refused() -> None:
    with pytest.raises(Refused, match="igbinary"):
        reader.loads_session(b"\x00\x00\x00\x02\x14\x01\x11\x07user_id\x06\x2a", "php")
    with pytest.raises(Refused, match="php_binary"):
        reader.loads_session(b"\x07user_idi:42;", "php_binary")  # type: ignore[arg-type]


def test_an_empty_record_is_an_empty_session() -> None:
    assert reader.loads_session(b"", "php") == {}
    assert reader.loads_session(b"", "php_serialize") == {}
    assert reader.loads_session(b"a:0:{}", "php_serialize") == {}


def test_session_layout_errors_are_refused() -> None:
    with pytest.raises(Refused, match="no '\\|'"):
        reader.loads_session(b"a|i:1;trailing", "php")
    with pytest.raises(Refused, match="empty variable name"):
        reader.loads_session(b"|i:1;", "php")
    with pytest.raises(Refused, match="not UTF-8"):
        reader.loads_session(b"\xff|i:1;", "php")
    with pytest.raises(Refused, match="not an array"):
        reader.loads_session(b"i:1;", "php_serialize")
    with pytest.raises(Refused, match="integer variable name"):
        reader.loads_session(b"a:1:{i:0;i:1;}", "php_serialize")
    with pytest.raises(Refused, match="after the PHP value"):
        reader.loads_session(PHP_SERIALIZE_HANDLER + b"N;", "php_serialize")


def test_truncation_at_every_offset_is_refused() -> None:
    for cut in range(len(PHP_SERIALIZE_HANDLER)):
        with pytest.raises(Refused):
            reader.loads_session(PHP_SERIALIZE_HANDLER[:cut] or b"a", "php_serialize")
    for cut in range(len(SCALARS)):
        with pytest.raises(Refused):
            reader.loads(SCALARS[:cut])


def test_a_php_session_cut_inside_a_value_is_refused() -> None:
    ends = {PHP_HANDLER.index(name) for name in (b"roles|", b"name|", b"ratio|", b"flags|")} | {len(PHP_HANDLER)}
    for cut in range(1, len(PHP_HANDLER)):
        if cut in ends:
            continue  # a cut between variables leaves a shorter, valid session
        with pytest.raises(Refused):
            reader.loads_session(PHP_HANDLER[:cut], "php")


def test_huge_declared_lengths_and_counts_are_refused_before_reading() -> None:
    started = time.perf_counter()
    with pytest.raises(Refused, match="declares 999999999 bytes"):
        reader.loads(b's:999999999:"x";')
    with pytest.raises(Refused, match="declares 999999999 entries"):
        reader.loads(b"a:999999999:{i:0;N;}")
    with pytest.raises(Refused, match="malformed"):
        reader.loads(b's:99999999999:"x";')  # more digits than any length
    assert time.perf_counter() - started < 0.1


def test_nesting_is_read_to_the_bound_and_refused_past_it() -> None:
    assert reader.loads(nested(MAX_DEPTH)) is not None
    with pytest.raises(Refused, match=f"deeper than {MAX_DEPTH}"):
        reader.loads(nested(MAX_DEPTH + 1))
    with pytest.raises(Refused, match="deeper"):
        reader.loads(b"a:1:{i:0;" * 7000)


def test_element_count_is_read_to_the_bound_and_refused_past_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # At 6 bytes or more per entry, MAX_INPUT_BYTES cannot hold MAX_ELEMENTS values: the bound is tested lowered.
    monkeypatch.setattr(reader, "MAX_ELEMENTS", 50)

    def array(n: int) -> bytes:
        return f"a:{n}:{{".encode() + b"".join(f"i:{i};N;".encode() for i in range(n)) + b"}"

    assert reader.loads(array(49)) == [None] * 49
    with pytest.raises(Refused, match="more than 50 values"):
        reader.loads(array(50))
    with pytest.raises(Refused, match="more than 50 values"):
        reader.loads_session(b"".join(f"v{i}|N;".encode() for i in range(51)), "php")


def test_integers_and_floats_outside_php_syntax_or_range_are_refused() -> None:
    for data in [b"i:9223372036854775808;", b"i:;", b"i:1.5;", b"i: 1;", b"d:;", b"d:inf;", b"d:1e;", b"b:2;"]:
        with pytest.raises(Refused):
            reader.loads(data)


def test_input_over_the_size_bound_is_refused() -> None:
    size = MAX_INPUT_BYTES
    with pytest.raises(Refused, match="over the"):
        reader.loads(f's:{size}:"'.encode() + b"x" * size + b'";')


def _php(code: str, save_path: Path, handler: str = "php") -> bytes:
    assert PHP is not None
    settings = [f"session.serialize_handler={handler}", "session.use_cookies=0", f"session.save_path={save_path}"]
    args = [PHP, "-n", *(arg for setting in settings for arg in ("-d", setting)), "-r", code]
    return subprocess.run(args, capture_output=True, check=True, timeout=30).stdout


SESSION_CODE = (
    'session_id("x"); session_start(); $_SESSION["user_id"] = 42; $_SESSION["roles"] = ["admin", "dev"];'
    '$_SESSION["name"] = "Zoë"; $_SESSION["ratio"] = 0.1; $_SESSION["flags"] = ["a" => true, "7" => null];'
    "echo session_encode();"
)


@pytest.mark.skipif(PHP is None, reason="no php binary installed: the byte strings above stand in for it")
@pytest.mark.parametrize("handler", ["php", "php_serialize"])
def test_what_a_real_php_writes_reads_back(handler: str, tmp_path: Path) -> None:
    data = _php(SESSION_CODE, tmp_path, handler)
    assert reader.loads_session(data, handler) == SESSION_VARS  # type: ignore[arg-type]


@pytest.mark.skipif(PHP is None, reason="no php binary installed: the byte strings above stand in for it")
def test_what_a_real_php_writes_for_objects_and_enums_is_refused(tmp_path: Path) -> None:
    code = 'enum Suit { case Hearts; } echo serialize(new ArrayObject([1])), "\\n", serialize(Suit::Hearts);'
    lines = _php(code, tmp_path).splitlines()
    assert [line[:2] for line in lines] == [b"O:", b"E:"]
    for line in lines:
        with pytest.raises(Refused):
            reader.loads(line)


@pytest.mark.skipif(PHP is None, reason="no php binary installed: the byte strings above stand in for it")
def test_what_a_real_igbinary_writes_is_refused() -> None:
    assert PHP is not None
    code = 'echo function_exists("igbinary_serialize") ? igbinary_serialize(["user_id" => 42]) : "";'
    data = subprocess.run([PHP, "-r", code], capture_output=True, check=True, timeout=30).stdout
    if not data:
        pytest.skip("php has no igbinary extension")
    with pytest.raises(Refused, match="igbinary"):
        reader.loads_session(data, "php")


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, -1, 7, 2**31, -(2**63), 2**63 - 1, rng.randrange(-(2**63), 2**63)])
    if kind == 2:
        return rng.choice([0.5, -0.0, 1e25, 1e-7, rng.uniform(-1e6, 1e6)])
    if kind in (3, 4, 5):
        return "".join(rng.choice("aZ0 _|;:{}\"'\\é€😀\x00") for _ in range(rng.randrange(8)))
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["0", "1", "7", "07", "-0", "-5", "", "9223372036854775808", "user", "a|b", "é"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _keys_as_text(value: object) -> object:
    # json_encode writes every key as a string: read integer keys the same way to compare.
    if isinstance(value, dict):
        return {str(key): _keys_as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_keys_as_text(item) for item in value]
    return value


@pytest.mark.skipif(PHP is None, reason="no php binary installed: the byte strings above stand in for it")
def test_random_values_serialized_by_a_real_php_read_as_php_sees_them() -> None:
    # PHP decodes each JSON line, then answers serialize() of it and json_encode() of it: what PHP itself holds.
    assert PHP is not None
    rng = random.Random(20261203)
    lines = "\n".join(json.dumps(_random_value(rng)) for _ in range(300)) + "\n"
    code = (
        "while (($line = fgets(STDIN)) !== false) { $v = json_decode($line, true, 512, JSON_THROW_ON_ERROR);"
        'echo base64_encode(serialize($v)), " ", json_encode($v, JSON_PRESERVE_ZERO_FRACTION), "\\n"; }'
    )
    out = subprocess.run([PHP, "-n", "-r", code], input=lines.encode(), capture_output=True, check=True, timeout=60)
    answers = out.stdout.decode().splitlines()
    assert len(answers) == 300
    for answer in answers:
        serialized, as_json = answer.split(" ", 1)
        assert _keys_as_text(reader.loads(base64.b64decode(serialized))) == json.loads(as_json), answer
