"""Session values at rest: sealed with AES-256-GCM from a key ring, bound to the key they are stored under.

A sealed value is ``e1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>``; the first key of the ring seals, every key
opens, so keys rotate without a flag day. The associated data is the store address of the session, so a sealed
value copied under another session's key does not open. Without keys values are stored as ``p1.<json>`` (plain),
and a sealed value met without the key to open it is a corrupt record: a denial, never a crash.

With keys, a plain value is refused too (unless ``accept_plain``, for the switch-over from an unsealed store):
otherwise anyone able to write to Redis could put any identity under the hash of a token they hold, and sealing
would protect confidentiality but not integrity.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.errors import CorruptRecord

SEALED = b"e1."
PLAIN = b"p1."
NONCE_BYTES = 12
KEY_BYTES = 32


class Sealer:
    def __init__(self, keys: tuple[tuple[str, bytes], ...] = (), *, accept_plain: bool = False) -> None:
        for kid, secret in keys:
            if len(secret) != KEY_BYTES:
                raise ValueError(f"encryption key {kid!r} must be {KEY_BYTES} bytes (AES-256)")
            if not kid or "." in kid:
                raise ValueError(f"encryption key id {kid!r} must be non-empty and without '.'")
        self._ciphers = {kid: AESGCM(secret) for kid, secret in keys}
        self._sealing_kid = keys[0][0] if keys else None
        self._accept_plain = accept_plain or not keys

    @property
    def seals(self) -> bool:
        return self._sealing_kid is not None

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        kid = self._sealing_kid
        if kid is None:
            return PLAIN + plaintext
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, plaintext, aad)
        return SEALED + kid.encode() + b"." + base64.urlsafe_b64encode(nonce + sealed)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if blob.startswith(PLAIN):
            if not self._accept_plain:
                raise CorruptRecord(
                    "stored session value is not sealed, and session.encryption_keys requires sealed values "
                    "(session.accept_unsealed: true reads values written before the keys were set)"
                )
            return blob[len(PLAIN) :]
        if not blob.startswith(SEALED):
            raise CorruptRecord("stored session value has an unknown format")
        kid_raw, sep, body = blob[len(SEALED) :].partition(b".")
        if not sep:
            raise CorruptRecord("sealed session value is malformed")
        cipher = self._ciphers.get(kid_raw.decode("ascii", "replace"))
        if cipher is None:
            raise CorruptRecord(f"sealed with key {kid_raw.decode('ascii', 'replace')!r}, which is not configured")
        try:
            raw = base64.urlsafe_b64decode(body)
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except (InvalidTag, binascii.Error, ValueError):
            raise CorruptRecord("sealed session value does not open (tampered, or under another key)") from None
