"""Session values at rest: sealed with AES-256-GCM from a key ring, bound to the key they are stored under.

A sealed value is ``e1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>``; the first key of the ring seals, every key
opens, so keys rotate without a flag day. The associated data is the store address of the session, so a sealed
value copied under another session's key does not open. Without keys values are stored as ``p1.<json>`` (plain),
and a sealed value met without the key to open it is a corrupt record: a denial, never a crash.

With keys, a plain value is refused too (unless ``accept_plain``, for the switch-over from an unsealed store):
otherwise anyone able to write to Redis could put any identity under the hash of a token they hold, and sealing
would protect confidentiality but not integrity.

A stored value longer than the largest record could seal to is refused before it is decoded or decrypted
(``RecordTooLarge``): a planted value of megabytes costs a length check, not a base64 pass and a decryption.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.core.session import MAX_RECORD_BYTES, RecordTooLarge
from sidecar.errors import CorruptRecord

SEALED = b"e1."
PLAIN = b"p1."
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


def sealed_size(plaintext_bytes: int, kid: str) -> int:
    """The length of ``plaintext_bytes`` sealed under ``kid`` (base64 with padding, as ``seal`` writes it)."""
    return len(SEALED) + len(kid.encode()) + 1 + 4 * math.ceil((NONCE_BYTES + plaintext_bytes + TAG_BYTES) / 3)


class Sealer:
    def __init__(
        self,
        keys: tuple[tuple[str, bytes], ...] = (),
        *,
        accept_plain: bool = False,
        max_plaintext: int = MAX_RECORD_BYTES,
    ) -> None:
        for kid, secret in keys:
            if len(secret) != KEY_BYTES:
                raise ValueError(f"encryption key {kid!r} must be {KEY_BYTES} bytes (AES-256)")
            if not kid or "." in kid:
                raise ValueError(f"encryption key id {kid!r} must be non-empty and without '.'")
        self._ciphers = {kid: AESGCM(secret) for kid, secret in keys}
        self._sealing_kid = keys[0][0] if keys else None
        self._accept_plain = accept_plain or not keys
        self._max_plaintext = max_plaintext
        # One bound for every stored form this ring can open: the longest kid's sealed size, or a plain value.
        self._max_stored = max([len(PLAIN) + max_plaintext, *(sealed_size(max_plaintext, kid) for kid, _ in keys)])

    @property
    def seals(self) -> bool:
        return self._sealing_kid is not None

    @property
    def max_stored(self) -> int:
        """The longest stored value ``open`` reads; a store can refuse longer ones without transferring them."""
        return self._max_stored

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        if len(plaintext) > self._max_plaintext:
            # Never write what open() would refuse; callers validate first, so this is a bug if it fires.
            raise ValueError(f"a session value of {len(plaintext)} bytes is over the {self._max_plaintext}-byte bound")
        kid = self._sealing_kid
        if kid is None:
            return PLAIN + plaintext
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, plaintext, aad)
        return SEALED + kid.encode() + b"." + base64.urlsafe_b64encode(nonce + sealed)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) > self._max_stored:
            raise RecordTooLarge(
                f"stored session value of {len(blob)} bytes is over the {self._max_stored}-byte bound: refused unread"
            )
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
