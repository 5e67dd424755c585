"""Tests for sidecar.core.tokens: minting, verifying and hashing session tokens, and the key ring."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from types import ModuleType
from urllib.parse import quote

import pytest

from sidecar.core import tokens as tokens_module
from sidecar.core.tokens import (
    ENTROPY_BYTES,
    KID_RULE,
    MAX_TOKEN_LENGTH,
    MIN_SECRET_BYTES,
    KeyRing,
    decode_secret,
    encode_secret,
    is_kid,
    is_well_formed,
    mint_token,
    secret_problem,
    session_key,
    token_key,
    user_tag,
    verify_token,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEY_OLD = b"o" * 32
KEY_NEW = b"n" * 48
FIXED_ENTROPY = bytes(range(7, 39))

RING = KeyRing.of([("k1", KEY_A)])

# RFC 6265 section 4.1.1 cookie-octet: %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
_COOKIE_OCTET = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")
_URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


TAG = "0a1b2c"


def _fresh(ring: KeyRing = RING) -> str:
    return mint_token(ring, secrets.token_bytes(ENTROPY_BYTES), TAG)


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --------------------------------------------------------------------------------------------------------
# Mint / verify
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ring",
    [
        KeyRing.of([("k1", KEY_A)]),
        KeyRing.of([("a", KEY_B), ("b", KEY_A)]),
        KeyRing.of([("x" * 16, b"\xff" * 64)]),
        KeyRing.of([("A-b_9", KEY_NEW)]),
    ],
    ids=["one_key", "two_keys", "longest_kid_long_secret", "kid_with_dash_and_underscore"],
)
def test_minted_token_verifies_and_is_well_formed(ring: KeyRing) -> None:
    token = _fresh(ring)
    assert is_well_formed(token)
    assert verify_token(ring, token)
    assert len(token) <= MAX_TOKEN_LENGTH


def test_minting_is_deterministic_for_the_same_entropy_and_key() -> None:
    assert mint_token(RING, FIXED_ENTROPY, TAG) == mint_token(RING, FIXED_ENTROPY, TAG)


def test_different_entropy_gives_different_tokens() -> None:
    tokens = {_fresh() for _ in range(200)}
    assert len(tokens) == 200


def test_token_shape_is_version_kid_tag_body_mac() -> None:
    token = mint_token(RING, FIXED_ENTROPY, TAG)
    version, kid, tag, body, mac = token.split(".")
    assert version == "s1"
    assert kid == "k1"
    assert tag == TAG
    assert _b64decode(body) == FIXED_ENTROPY
    assert len(_b64decode(mac)) == 16


@pytest.mark.parametrize("_round", range(50), ids=lambda i: f"sample{i}")
def test_token_is_url_safe_cookie_safe_and_never_starts_with_dash(_round: int) -> None:
    token = _fresh(KeyRing.of([("-k", KEY_A)])) if _round % 2 else _fresh()
    assert quote(token, safe="") == token, "URL-safe: nothing to percent-encode"
    assert _COOKIE_OCTET.fullmatch(token), "cookie-safe: only RFC 6265 cookie-octets"
    assert not token.startswith("-")
    assert token.isascii()


def test_token_carries_at_least_128_bits_of_entropy() -> None:
    assert ENTROPY_BYTES * 8 >= 128
    assert ENTROPY_BYTES >= 32
    token = mint_token(RING, FIXED_ENTROPY, TAG)
    body = token.split(".")[3]
    assert _b64decode(body) == FIXED_ENTROPY, "the whole entropy is carried, not a truncation of it"


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64], ids=lambda n: f"{n}_bytes")
def test_mint_rejects_entropy_of_the_wrong_size(size: int) -> None:
    with pytest.raises(ValueError, match="entropy"):
        mint_token(RING, b"\x01" * size, TAG)


def _single_character_changes(token: str) -> list[tuple[str, str]]:
    """(description, changed token) for every position: substituted by other characters, and deleted."""
    changes: list[tuple[str, str]] = []
    for i, ch in enumerate(token):
        neighbour = _URL_ALPHABET[(_URL_ALPHABET.index(ch) + 1) % len(_URL_ALPHABET)] if ch != "." else "A"
        for repl in (neighbour, "A", "_", ".", "="):
            if repl != ch:
                changes.append((f"pos{i}:{ch!r}->{repl!r}", token[:i] + repl + token[i + 1 :]))
        changes.append((f"pos{i}:delete", token[:i] + token[i + 1 :]))
    return changes


@pytest.mark.parametrize("ring_kids", [("k1",), ("k1", "k2")], ids=["one_key", "sibling_kid_in_ring"])
def test_every_single_character_change_anywhere_fails_verify(ring_kids: tuple[str, ...]) -> None:
    ring = KeyRing.of(zip(ring_kids, (KEY_A, KEY_B), strict=False))
    token = mint_token(ring, FIXED_ENTROPY, TAG)
    changes = _single_character_changes(token)
    assert len(changes) > 4 * len(token)
    accepted = [what for what, changed in changes if verify_token(ring, changed)]
    assert accepted == []


@pytest.mark.parametrize("position", ["first", "last"])
def test_appending_or_prepending_a_character_fails_verify(position: str) -> None:
    token = mint_token(RING, FIXED_ENTROPY, TAG)
    changed = "A" + token if position == "first" else token + "A"
    assert not verify_token(RING, changed)


@pytest.mark.parametrize(
    ("minting_ring", "verifying_ring"),
    [
        (KeyRing.of([("k1", KEY_A)]), KeyRing.of([("k1", KEY_B)])),
        (KeyRing.of([("k1", KEY_A)]), KeyRing.of([("k2", KEY_A)])),
        (KeyRing.of([("k9", KEY_A)]), KeyRing.of([("k1", KEY_A), ("k2", KEY_B)])),
        (KeyRing.of([("old", KEY_OLD)]), KeyRing.of([("new", KEY_NEW)])),
    ],
    ids=["same_kid_wrong_key", "same_key_unknown_kid", "unknown_kid_in_bigger_ring", "old_key_retired"],
)
def test_token_from_another_key_fails_verify_but_is_well_formed(minting_ring: KeyRing, verifying_ring: KeyRing) -> None:
    token = _fresh(minting_ring)
    assert is_well_formed(token)
    assert not verify_token(verifying_ring, token)


def test_key_rotation_verifies_old_tokens_and_mints_with_the_new_key() -> None:
    old_ring = KeyRing.of([("old", KEY_OLD)])
    rotated = KeyRing.of([("new", KEY_NEW), ("old", KEY_OLD)])
    old_token = _fresh(old_ring)
    new_token = _fresh(rotated)

    assert rotated.signing_kid == "new"
    assert verify_token(rotated, old_token)
    assert new_token.split(".")[1] == "new"
    assert verify_token(rotated, new_token)
    assert not verify_token(old_ring, new_token), "the old ring does not know the new key"


# --------------------------------------------------------------------------------------------------------
# Malformed shapes
# --------------------------------------------------------------------------------------------------------

_GOOD = mint_token(RING, FIXED_ENTROPY, TAG)
_V, _KID, _TAG, _BODY, _MAC = _GOOD.split(".")
_K = f"{_KID}.{_TAG}"  # the key id and the user tag travel together

MALFORMED: list[tuple[str, str]] = [
    ("empty", ""),
    ("just_the_version", "s1"),
    ("three_parts", f"{_V}.{_K}.{_BODY}"),
    ("extra_trailing_dot", _GOOD + "."),
    ("extra_leading_dot", "." + _GOOD),
    ("extra_part", f"{_GOOD}.{_MAC}"),
    ("double_dot", f"{_V}.{_K}..{_BODY}.{_MAC}"),
    ("only_dots", "..."),
    ("wrong_version", f"s2.{_K}.{_BODY}.{_MAC}"),
    ("upper_case_version", f"S1.{_K}.{_BODY}.{_MAC}"),
    ("empty_kid", f"{_V}..{_BODY}.{_MAC}"),
    ("kid_too_long", f"{_V}.{'k' * 17}.{_TAG}.{_BODY}.{_MAC}"),
    ("kid_with_bad_char", f"{_V}.k!.{_TAG}.{_BODY}.{_MAC}"),
    ("tag_missing", f"{_V}.{_KID}.{_BODY}.{_MAC}"),
    ("tag_upper_case", f"{_V}.{_KID}.{_TAG.upper()}.{_BODY}.{_MAC}"),
    ("tag_too_short", f"{_V}.{_KID}.{_TAG[:-1]}.{_BODY}.{_MAC}"),
    ("tag_not_hex", f"{_V}.{_KID}.zzzzzz.{_BODY}.{_MAC}"),
    ("body_with_plus", f"{_V}.{_K}.+{_BODY[1:]}.{_MAC}"),
    ("body_with_slash", f"{_V}.{_K}./{_BODY[1:]}.{_MAC}"),
    ("body_with_padding", f"{_V}.{_K}.{_BODY[:-1]}=.{_MAC}"),
    ("mac_with_padding", f"{_V}.{_K}.{_BODY}.{_MAC}=="),
    ("body_with_percent", f"{_V}.{_K}.%41{_BODY[3:]}.{_MAC}"),
    ("body_too_short", f"{_V}.{_K}.{_BODY[:-1]}.{_MAC}"),
    ("body_too_long", f"{_V}.{_K}.{_BODY}A.{_MAC}"),
    ("mac_too_short", f"{_V}.{_K}.{_BODY}.{_MAC[:-1]}"),
    ("mac_too_long", f"{_V}.{_K}.{_BODY}.{_MAC}A"),
    ("way_too_long", _GOOD + "A" * 10_000),
    ("longer_than_max", "s1." + "a" * MAX_TOKEN_LENGTH),
    ("non_ascii_letter_in_body", f"{_V}.{_K}.\xe9{_BODY[1:]}.{_MAC}"),
    ("fullwidth_letter_in_body", f"{_V}.{_K}.\uff21{_BODY[1:]}.{_MAC}"),
    ("arabic_indic_digit_in_mac", f"{_V}.{_K}.{_BODY}.\u0663{_MAC[1:]}"),
    ("non_ascii_kid", f"{_V}.k\xe9.{_TAG}.{_BODY}.{_MAC}"),
    ("lone_surrogate", f"{_V}.{_K}.\udcff{_BODY[1:]}.{_MAC}"),
    ("leading_space", " " + _GOOD),
    ("trailing_space", _GOOD + " "),
    ("trailing_newline", _GOOD + "\n"),
    ("trailing_crlf", _GOOD + "\r\n"),
    ("tab_inside", f"{_V}.{_K}.{_BODY[:-1]}\t.{_MAC}"),
    ("space_inside", f"{_V}.{_K}.{_BODY[:10]} {_BODY[11:]}.{_MAC}"),
    ("nul_inside", f"{_V}.{_K}.{_BODY[:-1]}\x00.{_MAC}"),
    ("quoted", f'"{_GOOD}"'),
    ("leading_dash", "-" + _GOOD[1:]),
]


@pytest.mark.parametrize("token", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_token_is_not_well_formed_and_fails_verify_without_raising(token: str) -> None:
    assert is_well_formed(token) is False
    assert verify_token(RING, token) is False


def test_malformed_cases_are_one_step_from_a_good_token() -> None:
    assert is_well_formed(_GOOD)
    assert verify_token(RING, _GOOD)


def test_forged_token_is_well_formed_but_fails_verify() -> None:
    forged = f"{_V}.{_K}.{_BODY}.{'A' * len(_MAC)}"
    assert is_well_formed(forged)
    assert not verify_token(RING, forged)


# --------------------------------------------------------------------------------------------------------
# Constant-time MAC comparison
# --------------------------------------------------------------------------------------------------------

_REAL_COMPARE = hmac.compare_digest


class _RecordingCompare:
    """Stands in for hmac.compare_digest: records its arguments and answers as told, or as the real one does."""

    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.calls: list[tuple[object, object]] = []

    def __call__(self, a: str | bytes, b: str | bytes) -> bool:
        self.calls.append((a, b))
        return _REAL_COMPARE(a, b) if self.answer is None else self.answer  # type: ignore[arg-type]


def _spy_compare(monkeypatch: pytest.MonkeyPatch, module: ModuleType, answer: bool | None = None) -> _RecordingCompare:
    compare = _RecordingCompare(answer)
    if hasattr(module, "compare_digest"):  # `from hmac import compare_digest`
        monkeypatch.setattr(module, "compare_digest", compare)
    else:
        monkeypatch.setattr(module.hmac, "compare_digest", compare)
    return compare


def test_verify_token_compares_the_mac_with_hmac_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    # `==` stops at the first differing character, so its timing would tell a forger how much of a MAC is right.
    compare = _spy_compare(monkeypatch, tokens_module)
    good = mint_token(RING, FIXED_ENTROPY, TAG)
    head, _, mac = good.rpartition(".")
    forged_mac = ("A" if mac[0] != "A" else "B") + mac[1:]
    assert verify_token(RING, good)
    assert not verify_token(RING, f"{head}.{forged_mac}")
    assert [set(call) for call in compare.calls] == [{mac}, {mac, forged_mac}]


@pytest.mark.parametrize("answer", [True, False])
def test_verify_token_answers_what_the_constant_time_compare_says(
    monkeypatch: pytest.MonkeyPatch, answer: bool
) -> None:
    # A compare_digest call whose answer is then overruled by an `==` elsewhere would pass the test above.
    good = mint_token(RING, FIXED_ENTROPY, TAG)
    head, _, mac = good.rpartition(".")
    forged = f"{head}.{'A' * len(mac)}"
    _spy_compare(monkeypatch, tokens_module, answer)
    assert verify_token(RING, forged if answer else good) is answer


# --------------------------------------------------------------------------------------------------------
# token_key
# --------------------------------------------------------------------------------------------------------


def test_token_key_is_the_sha256_hex_of_the_token() -> None:
    token = _fresh()
    key = token_key(token)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == hashlib.sha256(token.encode("ascii")).hexdigest()


def test_token_key_does_not_contain_the_token_or_its_parts() -> None:
    token = _fresh()
    key = token_key(token)
    _, _, _, body, mac = token.split(".")
    assert token not in key
    assert body not in key
    assert mac not in key


def test_token_key_is_deterministic_and_distinct_per_token() -> None:
    tokens = [_fresh() for _ in range(100)]
    assert [token_key(t) for t in tokens] == [token_key(t) for t in tokens]
    assert len({token_key(t) for t in tokens}) == 100


# --------------------------------------------------------------------------------------------------------
# KeyRing validation
# --------------------------------------------------------------------------------------------------------

BAD_RINGS: list[tuple[str, list[tuple[str, bytes]], str]] = [
    ("empty", [], "at least one key"),
    ("secret_31_bytes", [("k1", b"x" * 31)], "at least 32"),
    ("secret_empty", [("k1", b"")], "at least 32"),
    ("short_secret_behind_a_good_one", [("k1", KEY_A), ("k2", b"x" * 16)], "at least 32"),
    ("kid_empty", [("", KEY_A)], "key id"),
    ("kid_17_chars", [("k" * 17, KEY_A)], "key id"),
    ("kid_with_dot", [("k.1", KEY_A)], "key id"),
    ("kid_with_space", [("k 1", KEY_A)], "key id"),
    ("kid_non_ascii", [("k\xe9", KEY_A)], "key id"),
    ("kid_with_newline", [("k1\n", KEY_A)], "key id"),
    ("duplicate_kid", [("k1", KEY_A), ("k1", KEY_B)], "twice"),
    ("duplicate_kid_not_adjacent", [("k1", KEY_A), ("k2", KEY_B), ("k1", KEY_NEW)], "twice"),
]


@pytest.mark.parametrize(("keys", "message"), [c[1:] for c in BAD_RINGS], ids=[c[0] for c in BAD_RINGS])
def test_key_ring_rejects_bad_keys(keys: list[tuple[str, bytes]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeyRing.of(keys)


def test_key_ring_first_key_signs_and_every_key_is_looked_up() -> None:
    ring = KeyRing.of(iter([("a", KEY_A), ("b", KEY_B)]))
    assert ring.signing_kid == "a"
    assert ring.secret("a") == KEY_A
    assert ring.secret("b") == KEY_B
    assert ring.secret("c") is None


# --------------------------------------------------------------------------------------------------------
# decode_secret / encode_secret
# --------------------------------------------------------------------------------------------------------

DECODE_CASES: list[tuple[str, str, bytes]] = [
    ("four_chars_no_padding_needed", "AAAA", b"\x00\x00\x00"),
    ("two_chars_without_padding", "AA", b"\x00"),
    ("two_chars_with_padding", "AA==", b"\x00"),
    ("three_chars_without_padding", "AAE", b"\x00\x01"),
    ("three_chars_with_padding", "AAE=", b"\x00\x01"),
    ("url_safe_alphabet", "-_-_", b"\xfb\xff\xbf"),
    ("32_bytes_unpadded", encode_secret(KEY_A), KEY_A),
    ("32_bytes_padded", base64.urlsafe_b64encode(KEY_A).decode(), KEY_A),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in DECODE_CASES], ids=[c[0] for c in DECODE_CASES])
def test_decode_secret_accepts_base64url_with_or_without_padding(text: str, expected: bytes) -> None:
    assert decode_secret(text) == expected


@pytest.mark.parametrize("size", [1, 2, 3, 31, 32, 33, 64], ids=lambda n: f"{n}_bytes")
def test_encode_then_decode_secret_round_trips(size: int) -> None:
    raw = secrets.token_bytes(size)
    encoded = encode_secret(raw)
    assert "=" not in encoded
    assert decode_secret(encoded) == raw


BAD_SECRETS: list[tuple[str, str]] = [
    ("empty", ""),
    ("only_padding", "=="),
    ("one_char", "A"),
    ("five_chars", "AAAAA"),
    ("standard_alphabet_plus", "AA+A"),
    ("standard_alphabet_slash", "AA/A"),
    ("padding_in_the_middle", "AA=A"),
    ("leading_padding", "=AAA"),
    ("inner_space", "AA AA"),
    ("trailing_newline", "AAAA\n"),
    ("leading_space", " AAAA"),
    ("non_ascii", "AA\xe9A"),
    ("fullwidth_letters", "\uff21\uff21\uff21\uff21"),
]


@pytest.mark.parametrize("text", [c[1] for c in BAD_SECRETS], ids=[c[0] for c in BAD_SECRETS])
def test_decode_secret_rejects_anything_but_base64url_with_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        decode_secret(text)


# --------------------------------------------------------------------------------------------------------
# user tags and session keys
# --------------------------------------------------------------------------------------------------------


def test_user_tag_is_six_hex_digits_stable_per_user_and_spread_across_users() -> None:
    assert re.fullmatch(r"[0-9a-f]{6}", user_tag("alice"))
    assert user_tag("alice") == user_tag("alice")
    assert len({user_tag(f"user-{i}") for i in range(1000)}) > 990


def test_session_key_carries_the_tag_and_the_token_hash_never_the_token() -> None:
    token = mint_token(RING, FIXED_ENTROPY, user_tag("alice"))
    key = session_key(token)
    assert key.tag == user_tag("alice")
    assert key.digest == token_key(token)


def test_tag_change_breaks_the_mac() -> None:
    token = mint_token(RING, FIXED_ENTROPY, TAG)
    v, k, _, body, mac = token.split(".")
    assert not verify_token(RING, f"{v}.{k}.ffffff.{body}.{mac}")


@pytest.mark.parametrize("tag", ["", "ABCDEF", "12345", "1234567", "g00000"])
def test_mint_rejects_a_malformed_tag(tag: str) -> None:
    with pytest.raises(ValueError, match="tag"):
        mint_token(RING, FIXED_ENTROPY, tag)


def test_decode_secret_refuses_more_padding_than_base64_ever_needs() -> None:
    assert decode_secret("AA==") == b"\x00"
    with pytest.raises(ValueError, match="base64url"):
        decode_secret("AA===")


@pytest.mark.parametrize(
    ("kid", "valid"), [("k1", True), ("K_-9", True), ("k" * 16, True), ("", False), ("k" * 17, False), ("k.1", False)]
)
def test_is_kid_is_the_rule_key_rings_hold_key_ids_to(kid: str, valid: bool) -> None:
    assert is_kid(kid) is valid
    if not valid:
        with pytest.raises(ValueError, match=f"must be {KID_RULE}"):
            KeyRing.of([(kid, KEY_A)])


def test_secret_problem_names_the_length_and_never_the_secret() -> None:
    assert secret_problem(b"x" * MIN_SECRET_BYTES) is None
    assert secret_problem(b"hunter2") == f"is 7 bytes; at least {MIN_SECRET_BYTES} are required"
    with pytest.raises(ValueError, match="'k1' is 7 bytes; at least 32 are required"):
        KeyRing.of([("k1", b"hunter2")])
