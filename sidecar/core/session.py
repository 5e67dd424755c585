"""The session record, its expiry math and its stored form.

Times are POSIX seconds passed in by the caller (``now``), so every rule here is a plain function. A session dies
at the earlier of its idle expiry (``last_seen_at + idle_timeout``) and its absolute expiry; the store's TTL is
set to the same instant, and the sidecar checks the record's own times too, so a lagging TTL never lets a
session outlive its rules.

Stored values are bounded before they are decoded: a record of more than ``MAX_RECORD_BYTES`` is refused unread,
and its role and attribute counts are checked before any of its items is, so a planted record costs little to
refuse (a 3 MB one with 200,000 attributes took 0.8 s of the event loop to decode and then refuse). The same
bounds apply when a record is written, so everything the sidecar writes it can read back.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sidecar.errors import CorruptRecord

RECORD_VERSION = 1
MAX_VALUE_LENGTH = 4096
MAX_ATTRIBUTE_NAME_LENGTH = 64
MAX_ROLES = 64
MAX_ATTRIBUTES = 32
# The stored JSON form of one record. headers.max_bytes tops out at 64 KiB, so no identity that can travel upstream
# is refused; decoding 64 KiB costs well under a millisecond.
MAX_RECORD_BYTES = 64 * 1024
# What the record's own fields (keys, the session id the manager mints, times) take beyond the identity; a new or
# changed identity must leave that much room, so the record it becomes stays under MAX_RECORD_BYTES.
RECORD_FIXED_BYTES = 1024
MAX_IDENTITY_BYTES = MAX_RECORD_BYTES - RECORD_FIXED_BYTES
# Touching on every request would double the store's write load; refreshing last_seen once a tenth of the idle
# window (at most once a minute) keeps idle expiry within 10% of the configured value.
TOUCH_FRACTION = 0.1
TOUCH_MAX_INTERVAL = 60.0
MAX_SESSION_SECONDS = 400 * 86400  # a session that outlives a year of inactivity is a leak, not a feature
MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z: the last instant RFC 3339 output can render
# rotate() of the lifecycle and of the client: leave this part of the identity as it is. Here, in the core, so the
# client can offer it without importing the server's modules.
KEEP: Any = object()


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    user_id: str
    email: str | None
    roles: tuple[str, ...]
    attributes: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    last_seen_at: float = 0.0
    idle_timeout: float = 1800.0
    absolute_expires_at: float = 0.0


class RecordTooLarge(CorruptRecord):
    """A stored value over the size or count bounds: refused before (or instead of) decoding the rest of it."""


# Control characters (C0 but HTAB, DEL, C1: U+0085 is a line break to Python's str.splitlines and to parsers built
# on it), the Unicode line and paragraph separators, and the invisible format characters that reorder or hide text
# (bidirectional controls, zero-width space, word joiners, BOM, soft hyphen, interlinear annotations): each can
# break a header apart in some parser, or make a log line or an admin page show another identity than the bytes.
# ZWNJ and ZWJ (U+200C, U+200D) stay allowed: names in several scripts and emoji sequences need them.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_HIDDEN = re.compile(
    "[\xad\u061c\u180e\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ufffe\uffff]"
)
_ATTRIBUTE_NAME = re.compile("[A-Za-z0-9._-]+")
_SHOWN_LENGTH = 32


def shown(text: str) -> str:
    """``text`` as an error message quotes it: repr'd and cut short (a 4 MB name must not make a 4 MB message)."""
    return repr(text) if len(text) <= _SHOWN_LENGTH else repr(text[:_SHOWN_LENGTH]) + "…"


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot travel in an HTTP header, or None when it can."""
    if not value:
        return "is empty"
    if len(value) > MAX_VALUE_LENGTH:
        return f"is longer than {MAX_VALUE_LENGTH} characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if (found := _CONTROL.search(value)) is not None:
        return f"contains the control character {found.group()!r}"
    if (found := _HIDDEN.search(value)) is not None:
        return f"contains U+{ord(found.group()):04X}, a line separator or invisible formatting character"
    # Any Unicode whitespace, not only SP/HTAB: a trimming upstream would turn "bob\u3000" into "bob".
    if value != value.strip():
        return "has leading or trailing whitespace"
    return None


def attribute_name_problem(name: str) -> str | None:
    if len(name) > MAX_ATTRIBUTE_NAME_LENGTH:
        return f"is longer than {MAX_ATTRIBUTE_NAME_LENGTH} characters"
    if _ATTRIBUTE_NAME.fullmatch(name) is None:
        return "must be letters, digits, '-', '_' or '.'"
    return None


def role_problem(role: str) -> str | None:
    problem = header_value_problem(role)
    if problem:
        return problem
    if any(ch in role for ch in ", \t"):
        return "contains a comma or whitespace"
    return None


def timeout_problem(seconds: float) -> str | None:
    """Why ``seconds`` cannot be a session's idle or absolute timeout, or None (session.* in the config, and each
    session create, are held to this)."""
    if not math.isfinite(seconds) or seconds <= 0:
        return "must be a positive duration"
    if seconds > MAX_SESSION_SECONDS:
        return f"must be at most {MAX_SESSION_SECONDS // 86400:.0f} days"
    return None


def identity_bytes(user_id: str, email: str | None, roles: tuple[str, ...], attributes: Mapping[str, str]) -> int:
    """The size of the identity in the stored JSON form (``to_json``'s encoding)."""
    return len(_dumps([user_id, email, roles, attributes]))


def validate_identity(
    user_id: str, email: str | None, roles: tuple[str, ...], attributes: Mapping[str, str]
) -> list[str]:
    """Every problem with an identity that is about to be stored (and become header values)."""
    problems = _identity_problems(user_id, email, roles, attributes)
    # Only once every part is within its own bounds (so this costs little): the parts together must fit too.
    if not problems and (size := identity_bytes(user_id, email, roles, attributes)) > MAX_IDENTITY_BYTES:
        problems.append(f"the identity takes {size} bytes stored, more than {MAX_IDENTITY_BYTES}")
    return problems


def _identity_problems(
    user_id: str, email: str | None, roles: tuple[str, ...], attributes: Mapping[str, str]
) -> list[str]:
    """Every problem with the parts of an identity. Counts are checked before items, and the items of an over-long
    list are not looked at one by one: the work is bounded whatever the caller (or the store) hands in."""
    problems: list[str] = []
    if (p := header_value_problem(user_id)) is not None:
        problems.append(f"user id {p}")
    if email is not None and (p := header_value_problem(email)) is not None:
        problems.append(f"email {p}")
    if len(roles) > MAX_ROLES:
        problems.append(f"more than {MAX_ROLES} roles ({len(roles)})")
    else:
        for role in roles:
            if (p := role_problem(role)) is not None:
                problems.append(f"role {shown(role)} {p}")
    if len(attributes) > MAX_ATTRIBUTES:
        problems.append(f"more than {MAX_ATTRIBUTES} attributes ({len(attributes)})")
    else:
        for key, value in attributes.items():
            if (p := attribute_name_problem(key)) is not None:
                problems.append(f"attribute name {shown(key)} {p}")
            if (p := header_value_problem(value)) is not None:
                problems.append(f"attribute {shown(key)} {p}")
    return problems


def new_session(
    *,
    session_id: str,
    user_id: str,
    email: str | None,
    roles: tuple[str, ...],
    attributes: Mapping[str, str],
    idle_timeout: float,
    absolute_timeout: float,
    now: float,
) -> SessionRecord:
    """A fresh record; raises ValueError naming every problem with the identity or the timeouts."""
    problems = validate_identity(user_id, email, roles, attributes)
    for name, value in (("idle timeout", idle_timeout), ("absolute timeout", absolute_timeout)):
        if (problem := timeout_problem(value)) is not None:
            problems.append(f"{name} {problem}")
    if problems:
        raise ValueError("; ".join(problems))
    return SessionRecord(
        session_id=session_id,
        user_id=user_id,
        email=email,
        roles=tuple(dict.fromkeys(roles)),
        attributes=dict(attributes),
        created_at=now,
        last_seen_at=now,
        idle_timeout=idle_timeout,
        absolute_expires_at=now + absolute_timeout,
    )


def expires_at(record: SessionRecord) -> float:
    return min(record.last_seen_at + record.idle_timeout, record.absolute_expires_at)


def is_live(record: SessionRecord, now: float) -> bool:
    return now < expires_at(record)


def ttl_ms(record: SessionRecord, now: float) -> int:
    """Milliseconds the store should keep the record; at least 1 so a PX argument stays valid."""
    return max(1, math.ceil((expires_at(record) - now) * 1000))


def touch_interval(record: SessionRecord) -> float:
    return min(TOUCH_MAX_INTERVAL, record.idle_timeout * TOUCH_FRACTION)


def needs_touch(record: SessionRecord, now: float) -> bool:
    """True when last_seen is stale enough to refresh, and refreshing can still extend the session."""
    if record.last_seen_at + record.idle_timeout >= record.absolute_expires_at:
        return False
    return now - record.last_seen_at >= touch_interval(record)


def touched(record: SessionRecord, now: float) -> SessionRecord:
    return replace(record, last_seen_at=max(now, record.last_seen_at))


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def to_json(record: SessionRecord) -> bytes:
    return _dumps(
        {
            "v": RECORD_VERSION,
            "sid": record.session_id,
            "uid": record.user_id,
            "email": record.email,
            "roles": list(record.roles),
            "attrs": dict(record.attributes),
            "created": record.created_at,
            "seen": record.last_seen_at,
            "idle": record.idle_timeout,
            "abs": record.absolute_expires_at,
        }
    )


def _typed(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise CorruptRecord(f"session record field {key!r} is missing or not {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _seconds(data: Mapping[str, Any], key: str) -> float:
    value = _typed(data, key, (int, float))
    try:
        seconds = float(value)
    except OverflowError:
        raise CorruptRecord(f"session record field {key!r} is out of range") from None
    if not math.isfinite(seconds):
        raise CorruptRecord(f"session record field {key!r} is not finite")
    return seconds


def from_json(raw: bytes | str) -> SessionRecord:
    """Decode a stored record; anything unexpected raises CorruptRecord (it must never turn into an allow), a record
    over the size or count bounds ``RecordTooLarge`` before its parts are looked at."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordTooLarge(f"session record of {len(raw)} bytes is over the {MAX_RECORD_BYTES}-byte bound")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptRecord(f"session record is not JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise CorruptRecord("session record is not a JSON object")
    version = data.get("v")
    if isinstance(version, bool) or version != RECORD_VERSION:
        raise CorruptRecord(f"session record version {version!r} is not {RECORD_VERSION}")
    email = data.get("email")
    if email is not None and not isinstance(email, str):
        raise CorruptRecord("session record field 'email' is not a string")
    roles = _typed(data, "roles", list)
    attrs = _typed(data, "attrs", dict)
    if len(roles) > MAX_ROLES or len(attrs) > MAX_ATTRIBUTES:
        raise RecordTooLarge(
            f"session record has {len(roles)} roles and {len(attrs)} attributes, "
            f"over the bounds of {MAX_ROLES} and {MAX_ATTRIBUTES}"
        )
    if not all(isinstance(r, str) for r in roles):
        raise CorruptRecord("session record field 'roles' holds a non-string")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()):
        raise CorruptRecord("session record field 'attrs' holds a non-string")
    record = SessionRecord(
        session_id=_typed(data, "sid", str),
        user_id=_typed(data, "uid", str),
        email=email,
        roles=tuple(roles),
        attributes=attrs,
        created_at=_seconds(data, "created"),
        last_seen_at=_seconds(data, "seen"),
        idle_timeout=_seconds(data, "idle"),
        absolute_expires_at=_seconds(data, "abs"),
    )
    # The record's size is bounded already (MAX_RECORD_BYTES): its parts are checked, not their stored sum again.
    problems = _identity_problems(record.user_id, record.email, record.roles, record.attributes)
    if header_value_problem(record.session_id) is not None:
        problems.append("session id is not header-safe")
    if not all(0 <= t <= MAX_TIMESTAMP for t in (record.created_at, record.last_seen_at, record.absolute_expires_at)):
        problems.append("a timestamp is out of range")
    if not (0 < record.idle_timeout <= MAX_TIMESTAMP):
        problems.append("idle timeout is not positive")
    if problems:
        raise CorruptRecord("session record is invalid: " + "; ".join(problems))
    return record


def describe(record: SessionRecord) -> dict[str, object]:
    """The public, token-free view of a session (``session list``, logs)."""
    return {
        "session_id": record.session_id,
        "user_id": record.user_id,
        "email": record.email,
        "roles": list(record.roles),
        "attributes": dict(record.attributes),
        "created_at": rfc3339(record.created_at),
        "last_seen_at": rfc3339(record.last_seen_at),
        "expires_at": rfc3339(expires_at(record)),
    }
