"""Spring Session hashes for tests: the real Spring Security objects in ../shared/testdata/spring-security (written
by real Spring Security; see the README there) and a tiny JDK-serialization writer of exactly the two classes a
session hash holds besides them (java.lang.Long and java.lang.Integer), as ObjectOutputStream writes them."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / ".." / "shared" / "testdata" / "spring-security"
VERSIONS = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir()) if SAMPLES.is_dir() else []
NO_SAMPLES = f"the real Spring Security samples are absent ({SAMPLES})"
SEC = "org.springframework.security."
CONTEXT_ATTRIBUTE = "sessionAttr:SPRING_SECURITY_CONTEXT"


def sample(version: str, cls: str) -> bytes:
    """The real bytes of one serialized object (a test that needs them skips when ../shared is absent)."""
    path = SAMPLES / version / f"{SEC}{cls}.serialized"
    if not path.is_file():
        pytest.skip(NO_SAMPLES)
    return path.read_bytes()


HEADER = b"\xac\xed\x00\x05"


def utf(text: str) -> bytes:
    return struct.pack(">H", len(text)) + text.encode("ascii")


def _boxed(cls: str, uid: int, code: str, packed: bytes) -> bytes:
    """java.lang.Long or Integer as ObjectOutputStream writes one: the class, its Number super class, the value."""
    number = b"\x72" + utf("java.lang.Number") + struct.pack(">Q", 0x86AC951D0B94E08B) + b"\x02\x00\x00\x78\x70"
    fields = b"\x00\x01" + code.encode() + utf("value")
    return HEADER + b"\x73\x72" + utf(cls) + struct.pack(">Q", uid) + b"\x02" + fields + b"\x78" + number + packed


def jdk_long(value: int) -> bytes:
    return _boxed("java.lang.Long", 0x3B8BE490CC8F23DF, "J", struct.pack(">q", value))


def jdk_int(value: int) -> bytes:
    return _boxed("java.lang.Integer", 0x12E2A0A4F7818738, "I", struct.pack(">i", value))


def jdk_bool(value: bool) -> bytes:
    """java.lang.Boolean as ObjectOutputStream writes one (its super class is Object: no Number in between)."""
    fields = b"\x00\x01Z" + utf("value")
    head = b"\x73\x72" + utf("java.lang.Boolean") + struct.pack(">Q", 0xCD207280D59CFAEE) + b"\x02" + fields
    return HEADER + head + b"\x78\x70" + (b"\x01" if value else b"\x00")


EXPIRED_ATTRIBUTE = "sessionAttr:org.springframework.session.security.SpringSessionBackedSessionInformation.EXPIRED"


def session_hash(context: bytes | None, last_accessed_ms: int, max_inactive_seconds: int = 1800) -> dict[str, bytes]:
    """The hash Spring Session's repositories write for a session (RedisSessionMapper's field names), with the
    JDK serializer: built times around a real security context (None: a session nobody logged in to)."""
    fields = {
        "creationTime": jdk_long(last_accessed_ms - 1000),
        "lastAccessedTime": jdk_long(last_accessed_ms),
        "maxInactiveInterval": jdk_int(max_inactive_seconds),
    }
    if context is not None:
        fields[CONTEXT_ATTRIBUTE] = context
    return fields
