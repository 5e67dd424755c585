"""The JSON reader: connect-redis and Rails JSON sessions read back; duplicates, non-finite numbers and every
bound refused without a RecursionError."""

from __future__ import annotations

import json
import time

import pytest

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, MAX_INPUT_BYTES, Refused
from sidecar.sources.formats import json as reader

# What connect-redis stores: JSON.stringify(req.session), with express-session's cookie and passport's user.
EXPRESS_SESSION = (
    b'{"cookie":{"originalMaxAge":86400000,"expires":"2026-12-04T12:00:00.000Z","secure":true,'
    b'"httpOnly":true,"path":"/","sameSite":"lax"},"passport":{"user":"42"},"roles":["admin","dev"]}'
)
# Rails with redis-store's serializer: JSON: a session hash with Devise's warden key.
RAILS_SESSION = b'{"session_id":"abc","warden.user.user.key":[[1],"$2a$11$salt"],"_csrf_token":"t\\u00e9"}'


def test_an_express_session_reads_as_a_dict() -> None:
    session = reader.loads_object(EXPRESS_SESSION)
    assert session["passport"] == {"user": "42"}
    assert session["cookie"]["originalMaxAge"] == 86400000  # type: ignore[index]
    assert session == json.loads(EXPRESS_SESSION)


def test_a_rails_json_session_reads_with_its_escapes_decoded() -> None:
    assert reader.loads_object(RAILS_SESSION) == {
        "session_id": "abc",
        "warden.user.user.key": [[1], "$2a$11$salt"],
        "_csrf_token": "té",
    }


def test_any_json_value_reads_with_loads_but_only_objects_with_loads_object() -> None:
    assert reader.loads(b' [1, -2.5e3, "x", null, true, false] ') == [1, -2500.0, "x", None, True, False]
    for data in [b"[]", b'"s"', b"1", b"null"]:
        reader.loads(data)
        with pytest.raises(Refused, match="not an object"):
            reader.loads_object(data)


def test_duplicate_keys_are_refused_at_any_depth() -> None:
    with pytest.raises(Refused, match="'user' twice"):
        reader.loads(b'{"user":"alice","user":"admin"}')
    with pytest.raises(Refused, match="twice"):
        reader.loads(b'{"a":[{"k":1,"k":1}]}')
    with pytest.raises(Refused, match="twice"):
        reader.loads(b'{"k":1,"\\u006b":2}')  # the same key, escaped


def test_a_refusal_quotes_a_long_duplicate_key_cut_short() -> None:
    key = b"K" * 30_000
    with pytest.raises(Refused, match=r"'KKKK.*twice") as refused:
        reader.loads(b'{"' + key + b'":1,"' + key + b'":2}')
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b'{"a":-Infinity}', b"1e999", b"[-1E400]"])
def test_non_finite_numbers_are_refused(data: bytes) -> None:
    with pytest.raises(Refused, match=r"NaN|Infinity|overflows"):
        reader.loads(data)


def test_nesting_is_read_to_the_bound_and_refused_past_it() -> None:
    assert reader.loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(Refused, match=f"deeper than {MAX_DEPTH}"):
        reader.loads(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    with pytest.raises(Refused, match="deeper"):
        reader.loads(b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1))


def test_a_depth_bomb_is_refused_quickly_without_recursion_error() -> None:
    started = time.perf_counter()
    for bomb in [b"[" * MAX_INPUT_BYTES, b'{"a":[' * (MAX_INPUT_BYTES // 6)]:
        with pytest.raises(Refused, match="deeper"):
            reader.loads(bomb)
    assert time.perf_counter() - started < 1.0


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    deep_text = "[{" * 100 + '\\"' + "]}" * 3
    assert reader.loads(f'{{"s":"{deep_text}"}}'.encode()) == {"s": deep_text.replace('\\"', '"')}


@pytest.mark.timeout(10)  # the old scan took about 35 s on this input (each quote rescanned the rest)
def test_an_input_of_unterminated_escaped_quotes_is_refused_at_its_first_string() -> None:
    data = b'\\"' * (MAX_INPUT_BYTES // 2)  # \"\"\"...: no quote ever closes a string
    assert len(data) == MAX_INPUT_BYTES
    with pytest.raises(Refused, match="JSON string at character 1 is not terminated"):
        reader.loads(data)
    for prefix in [b"", b"[", b'{"a":']:  # an odd run of backslashes escapes the quote that would close
        with pytest.raises(Refused, match=f"JSON string at character {len(prefix)} is not terminated"):
            reader.loads(prefix + b'"' + b"\\" * 60_001 + b'"]}')


@pytest.mark.timeout(10)
def test_many_strings_with_quotes_backslashes_and_brackets_inside_read_back() -> None:
    items = ['a"b', "[{", '\\"', "\\"] * 2_000
    data = json.dumps(items).encode()
    assert len(data) < MAX_INPUT_BYTES
    assert reader.loads(data) == items
    with pytest.raises(Refused, match=f"JSON string at character {len(data) - 1} is not terminated"):
        reader.loads(data[:-1] + b'"')  # the list's end replaced by an opening quote


def test_element_count_is_read_to_the_bound_and_refused_past_it() -> None:
    assert len(reader.loads(json.dumps(list(range(MAX_ELEMENTS - 1))).encode())) == MAX_ELEMENTS - 1  # type: ignore[arg-type]
    with pytest.raises(Refused, match=f"more than {MAX_ELEMENTS} values"):
        reader.loads(json.dumps(list(range(MAX_ELEMENTS))).encode())


def test_integers_over_64_bits_are_refused_without_converting_long_digit_strings() -> None:
    assert reader.loads(b"[18446744073709551615, -9223372036854775808]") == [2**64 - 1, -(2**63)]
    with pytest.raises(Refused, match="bits"):
        reader.loads(b"18446744073709551616")
    started = time.perf_counter()
    with pytest.raises(Refused, match="digits"):
        reader.loads(b"9" * 60_000)  # over Python's int-string limit: refused before int() is reached
    assert time.perf_counter() - started < 0.5


def test_bytes_that_are_not_utf8_json_are_refused() -> None:
    for data in [b'{"a":"\xff"}', b"\xef\xbb\xbf{}", b"{'a':1}", b'{"a":1,}', b"", b"  ", b'{"a":1} {}', b"\x00"]:
        with pytest.raises(Refused):
            reader.loads(data)


def test_lone_surrogate_escapes_are_refused() -> None:
    with pytest.raises(Refused, match="surrogates"):
        reader.loads(b'{"a":"\\ud800"}')
    assert reader.loads(b'"\\ud83d\\ude00"') == "\U0001f600"  # a proper pair is one character


def test_truncation_at_every_offset_is_refused() -> None:
    for cut in range(len(EXPRESS_SESSION)):
        with pytest.raises(Refused):
            reader.loads(EXPRESS_SESSION[:cut])


def test_input_over_the_size_bound_is_refused() -> None:
    with pytest.raises(Refused, match="over the"):
        reader.loads(b'"' + b"x" * MAX_INPUT_BYTES + b'"')
