"""AES-256-GCM sealing of session values: round trips, key rotation, binding to the store key, tampering."""

from __future__ import annotations

import pytest

from sidecar.core.sealing import Sealer
from sidecar.core.session import MAX_RECORD_BYTES, RecordTooLarge
from sidecar.errors import CorruptRecord

A = ("a", b"A" * 32)
B = ("b", b"B" * 32)
AAD = b"sidecar:{abc123}:s:digest"


def test_sealed_value_opens_with_the_same_ring_and_hides_the_plaintext() -> None:
    sealer = Sealer((A,))
    sealed = sealer.seal(b'{"uid":"alice"}', AAD)
    assert sealed.startswith(b"e1.a.")
    assert b"alice" not in sealed
    assert sealer.open(sealed, AAD) == b'{"uid":"alice"}'


def test_each_seal_uses_a_fresh_nonce() -> None:
    sealer = Sealer((A,))
    assert sealer.seal(b"x", AAD) != sealer.seal(b"x", AAD)


def test_newest_key_seals_and_older_keys_still_open() -> None:
    old = Sealer((A,)).seal(b"old", AAD)
    rotated = Sealer((B, A))
    assert rotated.seal(b"new", AAD).startswith(b"e1.b.")
    assert rotated.open(old, AAD) == b"old"


def test_value_sealed_with_a_retired_key_is_corrupt() -> None:
    old = Sealer((A,)).seal(b"old", AAD)
    with pytest.raises(CorruptRecord, match="not configured"):
        Sealer((B,)).open(old, AAD)


def test_value_moved_under_another_key_does_not_open() -> None:
    sealer = Sealer((A,))
    with pytest.raises(CorruptRecord):
        sealer.open(sealer.seal(b"x", AAD), b"sidecar:{abc123}:s:other")


@pytest.mark.parametrize("position", [6, 10, 20, -1])
def test_any_changed_byte_is_detected(position: int) -> None:
    sealer = Sealer((A,))
    sealed = bytearray(sealer.seal(b"some session value", AAD))
    sealed[position] = ord("A") if sealed[position] != ord("A") else ord("B")
    with pytest.raises(CorruptRecord):
        sealer.open(bytes(sealed), AAD)


@pytest.mark.parametrize("blob", [b"", b"e1.", b"e1.a", b"e1.a.!!!", b"e1.a.QUFB", b"x1.zzz", b"{}"])
def test_malformed_blobs_are_corrupt_records_never_other_errors(blob: bytes) -> None:
    with pytest.raises(CorruptRecord):
        Sealer((A,)).open(blob, AAD)


def test_without_keys_values_are_stored_plain_and_sealed_ones_refused() -> None:
    plain = Sealer()
    assert not plain.seals
    assert plain.seal(b"v", AAD) == b"p1.v"
    assert plain.open(b"p1.v", AAD) == b"v"
    with pytest.raises(CorruptRecord):
        plain.open(Sealer((A,)).seal(b"v", AAD), AAD)


@pytest.mark.parametrize("key", [("a", b"short"), ("a", b"x" * 48), ("", b"x" * 32), ("a.b", b"x" * 32)])
def test_bad_keys_are_refused(key: tuple[str, bytes]) -> None:
    with pytest.raises(ValueError):
        Sealer((key,))


def test_with_keys_a_plain_value_is_refused_so_a_store_writer_cannot_forge_an_identity() -> None:
    sealed = Sealer((A,))
    with pytest.raises(CorruptRecord, match="not sealed"):
        sealed.open(b"p1.{}", AAD)


def test_accept_plain_reads_values_written_before_the_keys_were_set_and_still_seals_new_ones() -> None:
    migrating = Sealer((A,), accept_plain=True)
    assert migrating.open(b"p1.v", AAD) == b"v"
    assert migrating.seal(b"v", AAD).startswith(b"e1.")


# --- size bound: what is too big to be a record is refused before base64 and AES-GCM see it ---------------------

LONG_KID = ("k" * 40, b"L" * 32)


@pytest.mark.parametrize("keys", [(A,), (LONG_KID, A), ()], ids=["short_kid", "long_kid_opens_too", "plain"])
def test_the_largest_record_seals_and_opens(keys: tuple[tuple[str, bytes], ...]) -> None:
    sealer = Sealer(keys)
    largest = b"x" * MAX_RECORD_BYTES
    assert sealer.open(sealer.seal(largest, AAD), AAD) == largest


@pytest.mark.parametrize(
    ("keys", "blob"),
    [
        ((A,), b"e1.a." + b"A" * 3_000_000),  # a planted value of megabytes (issue #11)
        ((LONG_KID, A), b"e1." + b"k" * 41 + b"." + b"A" * 88_000),  # over the bound even for the longest kid
        ((), b"p1." + b"{" + b" " * MAX_RECORD_BYTES + b"}"),
    ],
    ids=["sealed_megabytes", "sealed_just_over", "plain_just_over"],
)
def test_a_stored_value_over_the_bound_is_refused_unread(keys: tuple[tuple[str, bytes], ...], blob: bytes) -> None:
    with pytest.raises(RecordTooLarge, match="refused unread"):
        Sealer(keys).open(blob, AAD)


def test_a_sealed_value_one_byte_over_what_the_largest_record_seals_to_is_refused() -> None:
    sealer = Sealer((A,))
    largest = sealer.seal(b"x" * MAX_RECORD_BYTES, AAD)
    assert len(largest) == sealer.max_stored  # the bound a store can apply before transferring a value
    with pytest.raises(RecordTooLarge):
        sealer.open(largest + b"=", AAD)


def test_sealing_a_value_that_open_would_refuse_is_an_error() -> None:
    with pytest.raises(ValueError, match="over the 65536-byte bound"):
        Sealer((A,)).seal(b"x" * (MAX_RECORD_BYTES + 1), AAD)
