"""Session token format: unguessable, MAC-protected, and only ever stored as a hash.

A token is ``s1.<kid>.<tag>.<body>.<mac>``: ``tag`` is the user's store tag (``user_tag``: 6 hex digits of a hash
of the user id, so a user's sessions and their index land in one Redis Cluster hash slot), ``body`` is 32 bytes
from a CSPRNG (256 bits), ``mac`` is the first 16 bytes of HMAC-SHA256 over everything before it with the key
``kid`` of the key ring. The MAC lets the sidecar reject a forged or mangled token before it costs a Redis round
trip; the store is keyed by ``session_key`` (the tag and the SHA-256 of the whole token), so a dump of Redis yields
no usable cookie. All characters are URL- and cookie-safe, and the
version prefix guarantees a token never begins with ``-`` (it cannot be mistaken for a CLI flag).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

VERSION = "s1"
ENTROPY_BYTES = 32
MAC_BYTES = 16
MIN_SECRET_BYTES = 32
_KID = re.compile(r"[A-Za-z0-9_-]{1,16}")
KID_RULE = "1-16 characters of A-Z a-z 0-9 _ -"
TAG_LENGTH = 6
_TAG = re.compile(r"[0-9a-f]{6}")
_B64_BODY_LEN = 43  # base64url of 32 bytes without padding
_B64_MAC_LEN = 22  # base64url of 16 bytes without padding
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
MAX_TOKEN_LENGTH = len(VERSION) + 1 + 16 + 1 + TAG_LENGTH + 1 + _B64_BODY_LEN + 1 + _B64_MAC_LEN


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Signing keys by id; the first one signs new tokens, every one verifies (so keys can be rotated)."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key ring needs at least one key")
        seen: set[str] = set()
        for kid, secret in self.keys:
            if not is_kid(kid):
                raise ValueError(f"key id {kid!r} must be {KID_RULE}")
            if (problem := secret_problem(secret)) is not None:
                raise ValueError(f"key {kid!r} {problem}")
            if kid in seen:
                raise ValueError(f"key id {kid!r} appears twice")
            seen.add(kid)

    @classmethod
    def of(cls, keys: Iterable[tuple[str, bytes]]) -> KeyRing:
        return cls(tuple(keys))

    @property
    def signing_kid(self) -> str:
        return self.keys[0][0]

    def secret(self, kid: str) -> bytes | None:
        for known, secret in self.keys:
            if known == kid:
                return secret
        return None


def is_kid(kid: str) -> bool:
    """True when ``kid`` may name a key of a ring (it travels in every token, so it is short and URL-safe)."""
    return _KID.fullmatch(kid) is not None


def secret_problem(secret: bytes) -> str | None:
    """Why ``secret`` cannot key a ring (too short to resist guessing), or None; the secret itself is never shown."""
    if len(secret) < MIN_SECRET_BYTES:
        return f"is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are required"
    return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _mac(secret: bytes, signed_part: str) -> str:
    digest = hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()
    return _b64(digest[:MAC_BYTES])


@dataclass(frozen=True, slots=True)
class SessionKey:
    """Where a session lives in the store: its user's tag and the token's SHA-256 (never the token)."""

    tag: str
    digest: str


def user_tag(user_id: str) -> str:
    """The store tag of a user: not secret, only spreads users over Cluster slots and groups a user's keys."""
    return hashlib.sha256(b"user-tag:" + user_id.encode("utf-8", "surrogateescape")).hexdigest()[:TAG_LENGTH]


def mint_token(ring: KeyRing, entropy: bytes, tag: str) -> str:
    """Build a token from ``entropy`` (the caller passes ``secrets.token_bytes(ENTROPY_BYTES)``) for the user
    whose ``user_tag`` is ``tag``."""
    if len(entropy) != ENTROPY_BYTES:
        raise ValueError(f"token entropy must be {ENTROPY_BYTES} bytes")
    if not _TAG.fullmatch(tag):
        raise ValueError(f"a user tag is {TAG_LENGTH} lower-case hex digits")
    kid, secret = ring.keys[0]
    signed_part = f"{VERSION}.{kid}.{tag}.{_b64(entropy)}"
    return f"{signed_part}.{_mac(secret, signed_part)}"


def is_well_formed(token: str) -> bool:
    """True when ``token`` has the shape of a token of ours, whatever its MAC says."""
    if len(token) > MAX_TOKEN_LENGTH:
        return False
    parts = token.split(".")
    if len(parts) != 5:
        return False
    version, kid, tag, body, mac = parts
    return (
        version == VERSION
        and _KID.fullmatch(kid) is not None
        and _TAG.fullmatch(tag) is not None
        and len(body) == _B64_BODY_LEN
        and _B64URL.fullmatch(body) is not None
        and len(mac) == _B64_MAC_LEN
        and _B64URL.fullmatch(mac) is not None
    )


def verify_token(ring: KeyRing, token: str) -> bool:
    """True only for a well-formed token whose MAC matches a key of ``ring`` (constant-time compare)."""
    if not is_well_formed(token):
        return False
    signed_part, _, mac = token.rpartition(".")
    kid = signed_part.split(".", 2)[1]
    secret = ring.secret(kid)
    if secret is None:
        return False
    return hmac.compare_digest(_mac(secret, signed_part), mac)


def token_key(token: str) -> str:
    """The SHA-256 of a token in hex, so Redis never holds a usable token."""
    return hashlib.sha256(token.encode("ascii", "surrogateescape")).hexdigest()


def session_key(token: str) -> SessionKey:
    """The store address of a well-formed token (call ``is_well_formed`` or ``verify_token`` first)."""
    return SessionKey(tag=token.split(".", 3)[2], digest=token_key(token))


def encode_secret(secret: bytes) -> str:
    return _b64(secret)


def decode_secret(text: str) -> bytes:
    """Decode base64url with or without padding (at most the two ``=`` base64 ever needs); raises ValueError on
    anything else. The message never quotes ``text``: it may be a secret."""
    unpadded = text.rstrip("=")
    if len(text) - len(unpadded) > 2 or not _B64URL.fullmatch(unpadded):
        raise ValueError("not base64url")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    try:
        return base64.urlsafe_b64decode(padded)
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc
