"""Tests for sidecar.core.session: record validation, expiry math, touching, and the stored JSON form."""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from dataclasses import replace
from typing import Any

import pytest

from sidecar.core.session import (
    MAX_ATTRIBUTE_NAME_LENGTH,
    MAX_ATTRIBUTES,
    MAX_IDENTITY_BYTES,
    MAX_RECORD_BYTES,
    MAX_ROLES,
    MAX_SESSION_SECONDS,
    MAX_VALUE_LENGTH,
    RecordTooLarge,
    SessionRecord,
    describe,
    expires_at,
    from_json,
    is_live,
    needs_touch,
    new_session,
    timeout_problem,
    to_json,
    touch_interval,
    touched,
    ttl_ms,
)
from sidecar.core.tokens import ENTROPY_BYTES, KeyRing, mint_token
from sidecar.errors import CorruptRecord

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
IDLE = 1800.0
ABSOLUTE = 43_200.0


def _new(**overrides: Any) -> SessionRecord:
    kwargs: dict[str, Any] = {
        "session_id": "sid-1",
        "user_id": "alice",
        "email": "alice@example.com",
        "roles": ("admin", "dev"),
        "attributes": {"tenant": "acme"},
        "idle_timeout": IDLE,
        "absolute_timeout": ABSOLUTE,
        "now": NOW,
    }
    kwargs.update(overrides)
    return new_session(**kwargs)


def _record(*, last_seen: float, idle: float, absolute_expires: float, created: float = 0.0) -> SessionRecord:
    return SessionRecord(
        session_id="sid",
        user_id="u",
        email=None,
        roles=(),
        created_at=created,
        last_seen_at=last_seen,
        idle_timeout=idle,
        absolute_expires_at=absolute_expires,
    )


# --------------------------------------------------------------------------------------------------------
# new_session validation
# --------------------------------------------------------------------------------------------------------

LONG = "x" * (MAX_VALUE_LENGTH + 1)

INVALID_SESSIONS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("empty_user", {"user_id": ""}, ["user id is empty"]),
    ("cr_in_user", {"user_id": "al\rice"}, ["user id contains the control character"]),
    ("lf_in_user", {"user_id": "alice\n"}, ["user id contains the control character"]),
    ("crlf_header_injection_in_user", {"user_id": "a\r\nx-user-roles: admin"}, ["user id"]),
    ("nul_in_user", {"user_id": "al\x00ice"}, ["user id contains the control character"]),
    ("del_in_user", {"user_id": "al\x7fice"}, ["user id contains the control character"]),
    ("leading_space_in_user", {"user_id": " alice"}, ["user id has leading or trailing whitespace"]),
    ("trailing_tab_in_user", {"user_id": "alice\t"}, ["user id has leading or trailing whitespace"]),
    ("too_long_user", {"user_id": LONG}, ["user id is longer than 4096"]),
    ("empty_email", {"email": ""}, ["email is empty"]),
    ("cr_in_email", {"email": "a@b\r.com"}, ["email contains the control character"]),
    ("lf_in_email", {"email": "a@b.com\nx: y"}, ["email contains the control character"]),
    ("nul_in_email", {"email": "a\x00@b.com"}, ["email contains the control character"]),
    ("too_long_email", {"email": LONG}, ["email is longer than 4096"]),
    ("comma_in_role", {"roles": ("admin,root",)}, ["role 'admin,root' contains a comma or whitespace"]),
    ("space_in_role", {"roles": ("site admin",)}, ["contains a comma or whitespace"]),
    ("tab_in_role", {"roles": ("a\tb",)}, ["contains a comma or whitespace"]),
    ("cr_in_role", {"roles": ("admin\r",)}, ["contains the control character"]),
    ("lf_in_role", {"roles": ("ad\nmin",)}, ["contains the control character"]),
    ("nul_in_role", {"roles": ("\x00",)}, ["contains the control character"]),
    ("empty_role", {"roles": ("dev", "")}, ["role '' is empty"]),
    ("too_long_role", {"roles": (LONG,)}, ["longer than 4096"]),
    # C1 controls and Unicode line breaks (issue #16: both were accepted and sent upstream).
    (
        "nel_and_line_separator_in_user",
        {"user_id": "bob\u0085x\u2028y"},
        ["user id contains the control character '\\x85'"],
    ),
    ("csi_in_email", {"email": "e\u009b31m@x"}, ["email contains the control character '\\x9b'"]),
    ("line_separator_in_user", {"user_id": "bob\u2028x-user-roles: admin"}, ["user id contains U+2028"]),
    ("paragraph_separator_in_email", {"email": "a@b.c\u2029"}, ["email contains U+2029"]),
    ("vertical_tab_in_user", {"user_id": "a\x0bb"}, ["user id contains the control character"]),
    ("right_to_left_override_in_role", {"roles": ("nimda\u202e",)}, ["contains U+202E"]),
    ("isolate_in_attribute_value", {"attributes": {"k": "a\u2067b"}}, ["attribute 'k' contains U+2067"]),
    ("zero_width_space_in_user", {"user_id": "ali\u200bce"}, ["user id contains U+200B"]),
    ("byte_order_mark_in_user", {"user_id": "\ufeffalice"}, ["user id contains U+FEFF"]),
    ("soft_hyphen_in_user", {"user_id": "ali\xadce"}, ["user id contains U+00AD"]),
    ("trailing_no_break_space_in_user", {"user_id": "bob\xa0"}, ["user id has leading or trailing whitespace"]),
    ("leading_ideographic_space_in_user", {"user_id": "\u3000bob"}, ["user id has leading or trailing whitespace"]),
    (
        "attribute_name_too_long",
        {"attributes": {"n" * (MAX_ATTRIBUTE_NAME_LENGTH + 1): "v"}},
        ["attribute name 'nnnn", "is longer than 64 characters"],
    ),
    (
        "identity_over_the_record_bound",
        {"roles": tuple(f"r{i:02d}" + "x" * 1100 for i in range(MAX_ROLES))},
        ["the identity takes", f"more than {MAX_IDENTITY_BYTES}"],
    ),
    ("too_many_roles", {"roles": tuple(f"r{i}" for i in range(MAX_ROLES + 1))}, ["more than 64 roles"]),
    ("empty_attribute_name", {"attributes": {"": "v"}}, ["attribute name '' must be"]),
    ("space_in_attribute_name", {"attributes": {"a b": "v"}}, ["attribute name 'a b' must be"]),
    ("colon_in_attribute_name", {"attributes": {"x-a:b": "v"}}, ["attribute name"]),
    ("newline_in_attribute_name", {"attributes": {"a\n": "v"}}, ["attribute name"]),
    ("non_ascii_attribute_name", {"attributes": {"caf\xe9": "v"}}, ["attribute name"]),
    ("fullwidth_digit_attribute_name", {"attributes": {"a\uff11": "v"}}, ["attribute name"]),
    ("cr_in_attribute_value", {"attributes": {"k": "v\r"}}, ["attribute 'k' contains the control character"]),
    ("lf_in_attribute_value", {"attributes": {"k": "a\nb"}}, ["attribute 'k' contains the control character"]),
    ("nul_in_attribute_value", {"attributes": {"k": "\x00"}}, ["attribute 'k' contains the control character"]),
    ("empty_attribute_value", {"attributes": {"k": ""}}, ["attribute 'k' is empty"]),
    ("too_long_attribute_value", {"attributes": {"k": LONG}}, ["attribute 'k' is longer than 4096"]),
    (
        "too_many_attributes",
        {"attributes": {f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}},
        ["more than 32 attributes"],
    ),
    ("zero_idle_timeout", {"idle_timeout": 0}, ["idle timeout must be a positive duration"]),
    ("negative_idle_timeout", {"idle_timeout": -1.0}, ["idle timeout must be a positive duration"]),
    ("nan_idle_timeout", {"idle_timeout": math.nan}, ["idle timeout must be a positive duration"]),
    ("zero_absolute_timeout", {"absolute_timeout": 0.0}, ["absolute timeout must be a positive duration"]),
    ("negative_absolute_timeout", {"absolute_timeout": -5}, ["absolute timeout must be a positive duration"]),
    ("infinite_absolute_timeout", {"absolute_timeout": math.inf}, ["absolute timeout must be a positive"]),
    (
        "every_problem_at_once",
        {
            "user_id": "",
            "email": "a\nb",
            "roles": ("ok", "x,y"),
            "attributes": {"bad name": "v\r"},
            "idle_timeout": 0,
            "absolute_timeout": -1,
        },
        [
            "user id is empty",
            "email contains the control character",
            "role 'x,y' contains a comma",
            "attribute name 'bad name'",
            "attribute 'bad name' contains the control character",
            "idle timeout must be a positive duration",
            "absolute timeout must be a positive duration",
        ],
    ),
]


@pytest.mark.parametrize(
    ("overrides", "fragments"), [c[1:] for c in INVALID_SESSIONS], ids=[c[0] for c in INVALID_SESSIONS]
)
def test_new_session_reports_every_problem_in_one_value_error(overrides: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(ValueError) as excinfo:
        _new(**overrides)
    message = str(excinfo.value)
    missing = [f for f in fragments if f not in message]
    assert missing == [], message


VALID_SESSIONS: list[tuple[str, dict[str, Any]]] = [
    ("defaults", {}),
    ("no_email", {"email": None}),
    ("no_roles_no_attributes", {"roles": (), "attributes": {}}),
    ("non_ascii_user_and_email", {"user_id": "zo\xeb", "email": "zo\xeb@exampl\xe9.com"}),
    ("inner_space_and_tab_in_user", {"user_id": "Alice Smith\tjr"}),
    ("longest_values", {"user_id": "u" * MAX_VALUE_LENGTH, "attributes": {"k": "v" * MAX_VALUE_LENGTH}}),
    ("most_roles", {"roles": tuple(f"r{i}" for i in range(MAX_ROLES))}),
    ("most_attributes", {"attributes": {f"k{i}": "v" for i in range(MAX_ATTRIBUTES)}}),
    ("attribute_name_charset", {"attributes": {"Org.Unit-id_2": "x"}}),
    ("longest_attribute_name", {"attributes": {"n" * MAX_ATTRIBUTE_NAME_LENGTH: "x"}}),
    (
        "zero_width_joiners_in_names_and_emoji",
        {"user_id": "\u0645\u06cc\u200c\u0634\u0648\u062f", "attributes": {"k": "\U0001f469\u200d\U0001f4bb"}},
    ),
    ("inner_no_break_space", {"user_id": "Jean\xa0Dupont"}),
    ("tiny_timeouts", {"idle_timeout": 0.001, "absolute_timeout": 0.001}),
]


@pytest.mark.parametrize("overrides", [c[1] for c in VALID_SESSIONS], ids=[c[0] for c in VALID_SESSIONS])
def test_new_session_accepts_valid_identities(overrides: dict[str, Any]) -> None:
    record = _new(**overrides)
    assert record.created_at == record.last_seen_at == NOW
    assert record.absolute_expires_at == NOW + overrides.get("absolute_timeout", ABSOLUTE)
    assert record.idle_timeout == overrides.get("idle_timeout", IDLE)


def test_an_attribute_name_of_megabytes_is_refused_with_a_short_message() -> None:
    # Issue #16: a 3.9 MB attribute name was accepted; its refusal must not quote it whole either.
    with pytest.raises(ValueError) as excinfo:
        _new(attributes={"n" * 3_900_000: "v"})
    assert "is longer than 64 characters" in str(excinfo.value)
    assert len(str(excinfo.value)) < 200


def test_counts_over_the_bound_are_reported_without_a_problem_per_item() -> None:
    with pytest.raises(ValueError) as excinfo:
        _new(
            roles=tuple(f"bad role {i}" for i in range(10_000)), attributes={f"bad name {i}": "" for i in range(10_000)}
        )
    message = str(excinfo.value)
    assert "more than 64 roles (10000)" in message and "more than 32 attributes (10000)" in message
    assert len(message) < 300


def test_the_largest_identity_accepted_fits_the_stored_record_bound() -> None:
    # Everything the sidecar writes it must read back: the biggest identity new_session takes (values of 4-byte
    # characters, as many roles as fit) becomes a record under MAX_RECORD_BYTES that from_json accepts.
    emoji = "\U0001f600"
    roles = tuple(f"r{i:02d}" + emoji * 230 for i in range(MAX_ROLES))
    for count in range(MAX_ROLES, 0, -1):
        try:
            record = _new(user_id=emoji * MAX_VALUE_LENGTH, email=None, roles=roles[:count], attributes={})
        except ValueError:
            continue
        break
    raw = to_json(record)
    assert MAX_IDENTITY_BYTES - 1000 < len(raw) <= MAX_RECORD_BYTES
    assert from_json(raw) == record


def test_new_session_deduplicates_roles_keeping_first_order() -> None:
    assert _new(roles=("dev", "admin", "dev", "ops", "admin")).roles == ("dev", "admin", "ops")


def test_new_session_copies_attributes() -> None:
    attributes = {"tenant": "acme"}
    record = _new(attributes=attributes)
    attributes["tenant"] = "evil"
    assert record.attributes == {"tenant": "acme"}


# --------------------------------------------------------------------------------------------------------
# Expiry math
# --------------------------------------------------------------------------------------------------------

EXPIRES_CASES: list[tuple[str, float, float, float, float]] = [
    # (id, last_seen offset, idle, absolute offset from NOW, expected offset from NOW)
    ("fresh_idle_first", 0.0, 1800.0, 43_200.0, 1800.0),
    ("fresh_absolute_first", 0.0, 1800.0, 600.0, 600.0),
    ("equal", 0.0, 1800.0, 1800.0, 1800.0),
    ("touched_late_absolute_caps", 42_000.0, 1800.0, 43_200.0, 43_200.0),
    ("touched_midway_idle_slides", 10_000.0, 1800.0, 43_200.0, 11_800.0),
]


@pytest.mark.parametrize(
    ("seen", "idle", "absolute", "expected"), [c[1:] for c in EXPIRES_CASES], ids=[c[0] for c in EXPIRES_CASES]
)
def test_expires_at_is_the_earlier_of_idle_and_absolute_expiry(
    seen: float, idle: float, absolute: float, expected: float
) -> None:
    record = _record(last_seen=NOW + seen, idle=idle, absolute_expires=NOW + absolute, created=NOW)
    assert expires_at(record) == NOW + expected


def test_new_session_expires_at_min_of_timeouts() -> None:
    assert expires_at(_new(idle_timeout=1800, absolute_timeout=43_200)) == NOW + 1800
    assert expires_at(_new(idle_timeout=7200, absolute_timeout=3600)) == NOW + 3600


IS_LIVE_CASES: list[tuple[str, float, bool]] = [
    ("at_creation", 0.0, True),
    ("well_before_expiry", 900.0, True),
    ("a_millisecond_before_expiry", 1799.999, True),
    ("exactly_at_expiry", 1800.0, False),
    ("just_after_expiry", 1800.001, False),
    ("long_after_expiry", 10**6, False),
]


@pytest.mark.parametrize(("offset", "live"), [c[1:] for c in IS_LIVE_CASES], ids=[c[0] for c in IS_LIVE_CASES])
def test_is_live_until_exactly_the_expiry_instant(offset: float, live: bool) -> None:
    record = _new(idle_timeout=1800, absolute_timeout=43_200)
    assert is_live(record, NOW + offset) is live


@pytest.mark.parametrize(
    ("offset", "live"),
    [(3599.999, True), (3600.0, False)],
    ids=["just_before_absolute", "at_absolute"],
)
def test_is_live_respects_absolute_expiry_even_when_recently_seen(offset: float, live: bool) -> None:
    record = touched(_new(idle_timeout=1800, absolute_timeout=3600), NOW + 3000)
    assert is_live(record, NOW + offset) is live


TTL_CASES: list[tuple[str, float, float, int]] = [
    # (id, expiry, now, expected ms)
    ("whole_seconds", 1800.0, 0.0, 1_800_000),
    ("half_second", 1.5, 0.0, 1500),
    ("quarter_second_at_realistic_clock", NOW + 0.25, NOW, 250),
    ("sub_millisecond_rounds_up_to_1", 0.0004, 0.0, 1),
    ("fraction_of_a_millisecond_rounds_up", 0.0015, 0.0, 2),
    ("exactly_expired_is_still_1", 10.0, 10.0, 1),
    ("long_expired_is_still_1", 10.0, 1e6, 1),
]


@pytest.mark.parametrize(("expiry", "now", "expected"), [c[1:] for c in TTL_CASES], ids=[c[0] for c in TTL_CASES])
def test_ttl_ms_is_at_least_1_and_rounds_up_to_whole_milliseconds(expiry: float, now: float, expected: int) -> None:
    record = _record(last_seen=0.0, idle=1e12, absolute_expires=expiry)
    ttl = ttl_ms(record, now)
    assert isinstance(ttl, int)
    assert ttl == expected


def test_ttl_ms_never_ends_before_the_record_expires() -> None:
    record = _new(idle_timeout=1800, absolute_timeout=43_200)
    for elapsed in (0.0, 0.1, 0.123_456, 899.9999, 1799.9991):
        now = NOW + elapsed
        assert now + ttl_ms(record, now) / 1000 >= expires_at(record)


# --------------------------------------------------------------------------------------------------------
# Touching
# --------------------------------------------------------------------------------------------------------

TOUCH_INTERVAL_CASES: list[tuple[str, float, float]] = [
    ("default_idle_capped_at_60s", 1800.0, 60.0),
    ("idle_600_exactly_60s", 600.0, 60.0),
    ("idle_100_tenth", 100.0, 10.0),
    ("idle_5_tenth", 5.0, 0.5),
    ("huge_idle_capped", 7 * 86_400.0, 60.0),
]


@pytest.mark.parametrize(
    ("idle", "interval"), [c[1:] for c in TOUCH_INTERVAL_CASES], ids=[c[0] for c in TOUCH_INTERVAL_CASES]
)
def test_touch_interval_is_min_of_60s_and_a_tenth_of_idle(idle: float, interval: float) -> None:
    assert touch_interval(_record(last_seen=0, idle=idle, absolute_expires=1e9)) == pytest.approx(interval)


NEEDS_TOUCH_CASES: list[tuple[str, float, float, float, bool]] = [
    # (id, idle, absolute offset from last_seen, elapsed since last_seen, expected)
    ("just_seen", 1800.0, 43_200.0, 0.0, False),
    ("before_interval", 1800.0, 43_200.0, 59.999, False),
    ("exactly_interval", 1800.0, 43_200.0, 60.0, True),
    ("after_interval", 1800.0, 43_200.0, 61.0, True),
    ("short_idle_before_tenth", 100.0, 43_200.0, 9.99, False),
    ("short_idle_at_tenth", 100.0, 43_200.0, 10.0, True),
    ("absolute_equals_idle_expiry", 1800.0, 1800.0, 600.0, False),
    ("absolute_before_idle_expiry", 1800.0, 1000.0, 600.0, False),
    ("absolute_just_after_idle_expiry", 1800.0, 1800.5, 60.0, True),
]


@pytest.mark.parametrize(
    ("idle", "absolute", "elapsed", "expected"),
    [c[1:] for c in NEEDS_TOUCH_CASES],
    ids=[c[0] for c in NEEDS_TOUCH_CASES],
)
def test_needs_touch_once_stale_and_only_while_touching_can_extend(
    idle: float, absolute: float, elapsed: float, expected: bool
) -> None:
    record = _record(last_seen=NOW, idle=idle, absolute_expires=NOW + absolute, created=NOW)
    assert needs_touch(record, NOW + elapsed) is expected


@pytest.mark.parametrize(
    ("now", "expected_seen"),
    [(NOW + 120, NOW + 120), (NOW, NOW), (NOW - 30, NOW), (0.0, NOW)],
    ids=["later_moves_forward", "same_instant", "earlier_clock_keeps_last_seen", "clock_at_epoch"],
)
def test_touched_never_moves_last_seen_backwards(now: float, expected_seen: float) -> None:
    record = _new()
    after = touched(record, now)
    assert after.last_seen_at == expected_seen
    assert replace(after, last_seen_at=record.last_seen_at) == record, "only last_seen changes"


def test_touched_extends_idle_expiry_but_not_absolute() -> None:
    record = _new(idle_timeout=1800, absolute_timeout=3600)
    assert expires_at(touched(record, NOW + 1000)) == NOW + 2800
    assert expires_at(touched(record, NOW + 3000)) == NOW + 3600


# --------------------------------------------------------------------------------------------------------
# Stored form
# --------------------------------------------------------------------------------------------------------

ROUND_TRIP: list[tuple[str, SessionRecord]] = [
    ("full", _new()),
    ("no_email_no_roles", _new(email=None, roles=(), attributes={})),
    ("non_ascii", _new(user_id="\u5f20\u4e09", email="zo\xeb@exampl\xe9.com", attributes={"n": "\u2603"})),
    ("fractional_times", touched(_new(idle_timeout=0.5, absolute_timeout=1.25), NOW + 0.125)),
    ("quote_and_backslash", _new(user_id='a"b\\c', attributes={"k": "{}[]"})),
]


@pytest.mark.parametrize("record", [c[1] for c in ROUND_TRIP], ids=[c[0] for c in ROUND_TRIP])
def test_to_json_from_json_round_trips(record: SessionRecord) -> None:
    raw = to_json(record)
    assert isinstance(raw, bytes)
    assert from_json(raw) == record
    assert from_json(raw.decode("utf-8")) == record


def _stored(**changes: Any) -> bytes:
    data = json.loads(to_json(_new()))
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


_DROP = object()
_REQUIRED = ["v", "sid", "uid", "roles", "attrs", "created", "seen", "idle", "abs"]

CORRUPT: list[tuple[str, bytes | str]] = [
    ("not_json", b"not json"),
    ("empty_bytes", b""),
    ("empty_str", ""),
    ("truncated_json", to_json(_new())[:-1]),
    ("invalid_utf8", b"\xff\xfe\xfd{}"),
    ("single_invalid_byte", b"\xc3"),
    ("json_array", b"[]"),
    ("json_null", b"null"),
    ("json_number", b"1"),
    ("json_string", b'"{}"'),
    ("json_true", b"true"),
    ("version_2", _stored(v=2)),
    ("version_0", _stored(v=0)),
    ("version_as_string", _stored(v="1")),
    ("version_null", _stored(v=None)),
    ("version_nan", _stored(v=math.nan)),
    *[(f"missing_{key}", _stored(**{key: _DROP})) for key in _REQUIRED],
    ("created_bool", _stored(created=True)),
    ("seen_bool", _stored(seen=False)),
    ("idle_bool", _stored(idle=True)),
    ("abs_bool", _stored(abs=True)),
    ("created_string", _stored(created="1700000000")),
    ("idle_null", _stored(idle=None)),
    ("abs_list", _stored(abs=[1])),
    ("uid_list", _stored(uid=["alice"])),
    ("uid_number", _stored(uid=1)),
    ("uid_null", _stored(uid=None)),
    ("sid_number", _stored(sid=7)),
    ("sid_list", _stored(sid=["sid"])),
    ("email_number", _stored(email=1)),
    ("email_list", _stored(email=["a@b.c"])),
    ("email_bool", _stored(email=False)),
    ("roles_string", _stored(roles="admin")),
    ("roles_object", _stored(roles={"admin": True})),
    ("roles_holds_number", _stored(roles=["admin", 1])),
    ("roles_holds_null", _stored(roles=[None])),
    ("roles_holds_list", _stored(roles=[["admin"]])),
    ("attrs_list", _stored(attrs=[["k", "v"]])),
    ("attrs_null", _stored(attrs=None)),
    ("attrs_value_number", _stored(attrs={"k": 1})),
    ("attrs_value_null", _stored(attrs={"k": None})),
    ("cr_in_uid", _stored(uid="alice\r")),
    ("lf_in_uid", _stored(uid="alice\nx-user-roles: admin")),
    ("nul_in_uid", _stored(uid="al\x00ice")),
    ("empty_uid", _stored(uid="")),
    ("lf_in_email", _stored(email="a@b.c\n")),
    ("empty_email", _stored(email="")),
    ("lf_in_sid", _stored(sid="sid\n")),
    ("empty_sid", _stored(sid="")),
    ("comma_in_role", _stored(roles=["admin,root"])),
    ("empty_role", _stored(roles=[""])),
    ("bad_attribute_name", _stored(attrs={"a b": "v"})),
    ("cr_in_attribute_value", _stored(attrs={"k": "v\r"})),
    ("too_many_roles", _stored(roles=[f"r{i}" for i in range(MAX_ROLES + 1)])),
    ("created_nan", _stored(created=math.nan)),
    ("seen_infinity", _stored(seen=math.inf)),
    ("abs_minus_infinity", _stored(abs=-math.inf)),
    ("idle_nan", _stored(idle=math.nan)),
    ("idle_infinity", _stored(idle=math.inf)),
    ("idle_zero", _stored(idle=0)),
    ("idle_negative", _stored(idle=-1.0)),
    ("created_overflows_to_infinity", _stored(created=1e999).replace(b"Infinity", b"1e999")),
    ("huge_int_literal_over_str_digits_limit", _stored(seen=_DROP)[:-1] + b',"seen":' + b"9" * 5000 + b"}"),
]


@pytest.mark.parametrize("raw", [c[1] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_from_json_raises_corrupt_record_and_nothing_else(raw: bytes | str) -> None:
    with pytest.raises(CorruptRecord):
        from_json(raw)


_UNSAFE_VALUES = {
    "cr": "alice\r",
    "lf": "alice\n",
    "nul": "al\x00ice",
    "crlf_header_injection": "alice\r\nx-user-roles: admin",
    "over_size": "a" * (MAX_VALUE_LENGTH + 1),
    "c1_next_line": "bob\u0085x",
    "c1_control_sequence_introducer": "e\u009b31m",
    "line_separator": "bob\u2028x",
    "right_to_left_override": "\u202eadmin",
}


def _stored_with(field: str, value: str) -> bytes:
    if field == "roles":
        return _stored(roles=["dev", value])
    if field == "attrs":
        return _stored(attrs={"team": value})
    return _stored(**{field: value})


@pytest.mark.parametrize("bad", list(_UNSAFE_VALUES.values()), ids=list(_UNSAFE_VALUES))
@pytest.mark.parametrize("field", ["uid", "email", "sid", "roles", "attrs"])
def test_stored_identity_value_with_cr_lf_nul_or_over_size_is_a_corrupt_record(field: str, bad: str) -> None:
    # Whatever wrote the store (an old version, another tool, an attacker with Redis access), these values would
    # become upstream header values: refused when read, not only when created.
    with pytest.raises(CorruptRecord):
        from_json(_stored_with(field, bad))


@pytest.mark.parametrize("field", ["uid", "email", "sid", "roles", "attrs"])
def test_stored_identity_value_of_exactly_the_size_limit_is_accepted(field: str) -> None:
    from_json(_stored_with(field, "a" * MAX_VALUE_LENGTH))


def planted(attributes: int) -> bytes:
    """The record of issue #11: a valid session whose attributes were multiplied by someone with store access."""
    return _stored(attrs={f"a{i:06d}": "v" for i in range(attributes)})


def test_a_record_over_the_byte_bound_is_refused_before_it_is_parsed() -> None:
    raw = planted(200_000)
    assert len(raw) > 2_500_000
    started = time.perf_counter()
    with pytest.raises(RecordTooLarge, match="over the 65536-byte bound"):
        from_json(raw)
    assert time.perf_counter() - started < 0.005  # the bound issue #11 sets; decoding it took 0.8 s


def test_a_record_at_the_byte_bound_is_parsed() -> None:
    raw = _stored(attrs={"k": "v" * MAX_VALUE_LENGTH})
    padded = raw[:-1] + b" " * (MAX_RECORD_BYTES - len(raw)) + b"}"
    assert len(padded) == MAX_RECORD_BYTES
    assert from_json(padded).attributes == {"k": "v" * MAX_VALUE_LENGTH}
    with pytest.raises(RecordTooLarge):
        from_json(padded[:-1] + b" }")


@pytest.mark.parametrize(
    "raw",
    [
        planted(MAX_ATTRIBUTES + 1),
        _stored(roles=[f"r{i}" for i in range(MAX_ROLES + 1)]),
        _stored(roles=["r"] * 12_000),
    ],
    ids=["one_attribute_too_many", "one_role_too_many", "twelve_thousand_roles_under_the_byte_bound"],
)
def test_a_record_with_too_many_roles_or_attributes_is_refused_as_too_large(raw: bytes) -> None:
    assert len(raw) <= MAX_RECORD_BYTES
    with pytest.raises(RecordTooLarge, match="over the bounds"):
        from_json(raw)


def test_from_json_accepts_missing_email_as_none() -> None:
    assert from_json(_stored(email=_DROP)).email is None


def test_from_json_raises_corrupt_record_for_integer_timestamp_too_large_for_a_float() -> None:
    with pytest.raises(CorruptRecord):
        from_json(_stored(created=10**400))


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"v":' * 100_000], ids=["nested_arrays", "nested_objects"])
def test_from_json_raises_corrupt_record_for_deeply_nested_json(raw: bytes) -> None:
    with pytest.raises(CorruptRecord):
        from_json(raw)


def test_from_json_rejects_bool_version() -> None:
    with pytest.raises(CorruptRecord):
        from_json(_stored(v=True))


# --------------------------------------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------------------------------------

_RFC3339_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def test_describe_has_handles_and_times_in_rfc3339_z_form() -> None:
    record = touched(_new(idle_timeout=1800, absolute_timeout=43_200), NOW + 60.75)
    view = describe(record)
    assert view["session_id"] == "sid-1"
    assert view["created_at"] == "2023-11-14T22:13:20Z"
    assert view["last_seen_at"] == "2023-11-14T22:14:20Z"
    assert view["expires_at"] == "2023-11-14T22:44:20Z"
    for key in ("created_at", "last_seen_at", "expires_at"):
        assert _RFC3339_Z.fullmatch(str(view[key])), view[key]


def test_describe_expires_at_is_the_absolute_expiry_when_it_comes_first() -> None:
    view = describe(_new(idle_timeout=7200, absolute_timeout=3600))
    assert view["expires_at"] == "2023-11-14T23:13:20Z"


def test_describe_never_contains_a_token() -> None:
    ring = KeyRing.of([("k1", bytes(32))])
    token = mint_token(ring, secrets.token_bytes(ENTROPY_BYTES), "abc123")
    view = describe(_new(session_id="handle-123"))
    text = json.dumps(view)
    assert token not in text
    assert token.split(".")[2] not in text
    assert not any("token" in key.lower() for key in view)
    assert json.loads(text) == view, "JSON-serialisable as is"


@pytest.mark.parametrize(
    ("seconds", "problem"),
    [
        (1.0, None),
        (MAX_SESSION_SECONDS, None),
        (MAX_SESSION_SECONDS + 1, "must be at most 400 days"),
        (0.0, "must be a positive duration"),
        (-5.0, "must be a positive duration"),
        (math.nan, "must be a positive duration"),
        (math.inf, "must be a positive duration"),
    ],
)
def test_timeout_problem_is_the_rule_session_timeouts_meet(seconds: float, problem: str | None) -> None:
    assert timeout_problem(seconds) == problem
