"""Fuzzing the Java serialization and Spring Session readers: whatever the bytes, an answer or ``Refused``.

Hypothesis feeds random bytes, mutations of the real Spring Security streams (/work/shared, skipped when absent)
and of hand-written Spring JSON to ``java.loads``, ``spring.loads_json``, ``spring.read_session`` and
``spring.identity``. Properties of every example: nothing but ``Refused`` escapes; what is returned is plain
(dict with str keys, list, str, bytes, int, float, bool, None) and, walked as a tree (shared values once per
place), stays within MAX_ELEMENTS nodes and MAX_DEPTH levels; ``identity()`` of whatever was read answers a
SpringIdentity, None or ``Refused`` (a "@class" that is a list or a dict once raised TypeError there); each
example ends within the deadline. CI-sized:
a few hundred examples per property; run with ``-s`` to see the examples run and the slowest one.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.sources.formats import MAX_DEPTH, MAX_ELEMENTS, Refused, java, spring

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "testdata" / "spring-security"
REAL = [path.read_bytes() for path in sorted(SAMPLES.glob("*/*.serialized"))] if SAMPLES.is_dir() else []
needs_samples = pytest.mark.skipif(not REAL, reason=f"the real Spring Security samples are absent ({SAMPLES})")

FUZZ = settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
BOUND_SECONDS = 1.0  # per example, on top of Hypothesis's deadline (which it relaxes when shrinking)

STATS = {"examples": 0, "max_seconds": 0.0, "refused": 0, "read": 0}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(
        f"\njava/spring fuzz: {STATS['examples']} examples, {STATS['read']} read, {STATS['refused']} refused, "
        f"slowest {STATS['max_seconds'] * 1000:.1f} ms"
    )


def check_plain(value: object) -> None:
    """The tree a consumer walks: plain types only, within the element and depth bounds."""
    count = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        assert count <= MAX_ELEMENTS + 1, "more nodes than the element bound"
        assert depth <= MAX_DEPTH + 1, "deeper than the depth bound"
        if isinstance(node, dict):
            assert all(isinstance(k, str) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        else:
            assert node is None or isinstance(node, str | bytes | int | float | bool), type(node)


def run(reader: Callable[[bytes], object], data: bytes) -> None:
    start = time.perf_counter()
    try:
        value = reader(data)
    except Refused:
        STATS["refused"] += 1
    else:
        check_plain(value)
        STATS["read"] += 1
        with contextlib.suppress(Refused):
            found = spring.identity(value)
            assert found is None or isinstance(found, spring.SpringIdentity), type(found)
    elapsed = time.perf_counter() - start
    STATS["examples"] += 1
    STATS["max_seconds"] = max(STATS["max_seconds"], elapsed)
    assert elapsed < BOUND_SECONDS, f"{elapsed:.3f} s for {len(data)} bytes"


# ------------------------------------------------------------------------------- strategies

HEADER = b"\xac\xed\x00\x05"
# Bytes the grammar gives meaning to: type codes, flags, length prefixes at their extremes.
INTERESTING = [*range(0x70, 0x7F), 0x00, 0x01, 0x02, 0x03, 0x04, 0x08, 0x0C, 0x12, 0x7F, 0x80, 0xC0, 0xED, 0xFF]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        # Past the 4-byte header, which Hypothesis's bias to small numbers would otherwise break most of the time.
        at = draw(st.integers(min(4, len(data) - 1), len(data) - 1))
        kind = draw(st.sampled_from(["value", "flip", "set", "delete", "insert", "repeat", "cut", "int", *"vvvv"]))
        if kind in ("value", "v"):
            # Structure kept, a value changed: a string's text, a back reference's target, or null for either,
            # so that more mutants read through and reach identity() with values of the wrong kind.
            spots = [m.start() for m in _VALUES.finditer(data)]
            if spots:
                at = spots[draw(st.integers(0, len(spots) - 1))]
                match = _VALUES.match(data, at)
                assert match is not None
                end = match.end() + (match.group(1)[0] if match.group(1) is not None else 0)
                data[at:end] = draw(_values)
        elif kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from(INTERESTING))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":  # a slice of the stream again: back references and nesting out of place
            end = min(len(data), at + draw(st.integers(1, 200)))
            data[at:at] = data[at:end] * draw(st.integers(1, 5))
        elif kind == "cut":
            del data[at:]
        else:  # a length or handle field overwritten with an extreme
            data[at : at + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 0x7E0000, 0x7FFFFFFF, 0xFFFFFFFF])))
    return bytes(data)


# A TC_STRING of up to 63 ASCII characters or a TC_REFERENCE to one of the first 64 handles.
_VALUES = re.compile(rb"\x74\x00([\x00-\x3f])|\x71\x00\x7e\x00[\x00-\x3f]", re.DOTALL)
# "@class" and class names among the texts: a map key "@class" (refused: it would pose as a class) and class names
# where a map's or a field's value is expected.
_TEXTS = st.one_of(
    st.text("abcROLE_@.", max_size=12),
    st.sampled_from(["@class", "org.springframework.security.core.context.SecurityContextImpl", "java.util.HashMap"]),
)
_values = st.one_of(
    _TEXTS.map(lambda t: b"\x74" + struct.pack(">H", len(t.encode())) + t.encode()),
    st.integers(0, 80).map(lambda h: b"\x71" + struct.pack(">I", 0x7E0000 + h)),
    st.just(b"\x70"),
)

random_streams = st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(HEADER.__add__))


SEC = "org.springframework.security."
JSON_SEEDS = [
    json.dumps(tree).encode()
    for tree in [
        {
            "@class": SEC + "core.context.SecurityContextImpl",
            "authentication": {
                "@class": SEC + "authentication.UsernamePasswordAuthenticationToken",
                "principal": {
                    "@class": SEC + "core.userdetails.User",
                    "username": "user",
                    "password": None,
                    "enabled": True,
                    "authorities": [
                        "java.util.Collections$UnmodifiableSet",
                        [{"@class": SEC + "core.authority.SimpleGrantedAuthority", "authority": "ROLE_USER"}],
                    ],
                },
                "authenticated": True,
                "details": None,
                "credentials": None,
                "authorities": [
                    "java.util.Collections$UnmodifiableRandomAccessList",
                    [{"@class": SEC + "core.authority.SimpleGrantedAuthority", "authority": "ROLE_USER"}],
                ],
            },
        },
        {
            "@class": SEC + "oauth2.core.oidc.user.DefaultOidcUser",
            "idToken": {
                "@class": SEC + "oauth2.core.oidc.OidcIdToken",
                "claims": {"@class": "java.util.Collections$UnmodifiableMap", "iat": ["java.time.Instant", 1.5]},
            },
            "nameAttributeKey": "sub",
        },
    ]
]


# ------------------------------------------------------------------------------- properties


@settings(FUZZ)
@given(random_streams)
def test_random_bytes_are_read_or_refused(data: bytes) -> None:
    run(java.loads, data)


@needs_samples
@settings(FUZZ)
@given(mutated(REAL or [HEADER]))
def test_mutated_real_streams_are_read_or_refused(data: bytes) -> None:
    run(java.loads, data)


# Jackson-shaped trees: "@class" objects and [type id, value] wrappers of accepted and foreign classes, with the
# field names identity() looks at, so that the normalizer and the identity rules see well-formed JSON too.
_CLASSES = [*sorted(java.SPRING_CLASSES), "java.util.HashMap", "java.util.Collections$UnmodifiableMap", "x.Evil"]
_WRAPPERS = ["java.util.ArrayList", "java.util.Collections$UnmodifiableSet", "java.time.Instant", "java.lang.Long"]
_KEYS = ["authentication", "principal", "authorities", "authenticated", "username", "role", "authority",
         "attributes", "nameAttributeKey", "idToken", "userInfo", "claims", "email", "sub"]  # fmt: skip
_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False,
    allow_infinity=False), st.text(max_size=8), st.sampled_from(_KEYS))  # fmt: skip


def _extend(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    # Mostly a class name, sometimes a "@class" of the wrong kind (a list, a dict, a number: never hashable as
    # a class name).
    classes = st.one_of(st.sampled_from(_CLASSES), st.sampled_from(_CLASSES).map(lambda c: [c]), children)
    typed = st.builds(
        lambda cls, fields: {"@class": cls, **fields},
        classes,
        st.dictionaries(st.sampled_from(_KEYS), children, max_size=5),
    )
    wrapped = st.builds(lambda cls, items: [cls, items], st.sampled_from(_WRAPPERS), st.lists(children, max_size=4))
    return st.one_of(typed, wrapped, st.builds(lambda v: [_WRAPPERS[2], v], children))


json_trees = st.recursive(_leaves, _extend, max_leaves=30).map(lambda tree: json.dumps(tree).encode())


@settings(FUZZ)
@given(st.one_of(mutated(JSON_SEEDS), st.binary(max_size=300), json_trees))
def test_mutated_spring_json_is_read_or_refused(data: bytes) -> None:
    run(spring.loads_json, data)


FIELDS = [b"creationTime", b"lastAccessedTime", b"maxInactiveInterval", b"sessionAttr:SPRING_SECURITY_CONTEXT"]


@settings(FUZZ)
@given(
    st.one_of(mutated(JSON_SEEDS), json_trees, st.sampled_from(JSON_SEEDS)),
    st.sampled_from([b"1700000000000", b'["java.lang.Long", 1700000000000]', b"1.5", b"[]", b'{"@class": []}']),
)
def test_fuzzed_json_session_hashes_are_read_or_refused(context: bytes, time_value: bytes) -> None:
    fields = dict.fromkeys(FIELDS[:3], time_value) | {FIELDS[3]: context}

    def read(_: bytes) -> object:
        session = spring.read_session(fields, "json")
        spring.expires_at_ms(session)
        return session.context

    run(read, context)


@needs_samples
@settings(FUZZ)
@given(
    st.dictionaries(
        st.sampled_from(FIELDS),
        st.one_of(mutated(REAL or [HEADER]), st.sampled_from(REAL or [HEADER]), st.binary(max_size=40)),
        max_size=4,
    )
)
def test_fuzzed_session_hashes_are_read_or_refused(fields: dict[bytes, bytes]) -> None:
    def read(_: bytes) -> object:
        session = spring.read_session(fields, "jdk")
        spring.expires_at_ms(session)
        return session.context

    run(read, b"".join(fields.values()))
