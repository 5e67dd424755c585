"""Tests for sidecar.authz.assertion_issuer: signing, the JWK Set, memoization and key rotation, verified with PyJWT."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from sidecar.authz import assertion_issuer as assertions
from sidecar.authz.assertion_issuer import AssertionIssuer, UnsupportedKey, UnusableKey, load_private_key, public_jwk
from sidecar.config import AssertionConfig
from sidecar.core.assertion import CLAIM_NAMES, CONTEXT_AUDIENCE, CONTEXT_CLAIMS, AssertionSettings
from sidecar.core.decision import Allow, Deny, allow, inspect
from sidecar.core.request import RequestView
from sidecar.core.session import MAX_ROLES, SessionRecord
from tests.support.edge import SETTINGS as EDGE

ISSUER = "session-sidecar"
HOST = "app.example.com"
SETTINGS = AssertionSettings(header="x-user-assertion", issuer=ISSUER, ttl=60.0, claims=CLAIM_NAMES, audience="")
RECORD = SessionRecord(session_id="s-handle-1", user_id="alice", email="alice@example.com", roles=("admin", "dev"))
ALGORITHMS = ("ES256", "EdDSA")
# A throwaway EC key on secp112r1, a curve OpenSSL parses but cryptography refuses with UnsupportedAlgorithm
# (not ValueError); made with `openssl ecparam -name secp112r1 -genkey -noout`.
SECP112R1_PEM = b"""-----BEGIN EC PRIVATE KEY-----
MD4CAQEEDiCTHV6GIKLNIj75QzYloAcGBSuBBAAGoSADHgAENjLXjSJfN2YuvaS0
l2pvBb343gZiYTLC2IiaZQ==
-----END EC PRIVATE KEY-----
"""


def new_key(algorithm: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256" else ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


@pytest.fixture(scope="module")
def pems() -> dict[str, bytes]:
    return {algorithm: new_key(algorithm) for algorithm in ALGORITHMS}


def issuer_for(algorithm: str, pem: bytes, **kwargs: Any) -> AssertionIssuer:
    return AssertionIssuer(SETTINGS, [("k-" + algorithm.lower(), algorithm, pem)], **kwargs)


def verify(token: str, jwks: dict[str, object], *, audience: str = HOST, issuer: str = ISSUER) -> dict[str, Any]:
    """What an upstream does: pick the key by kid from the published JWK Set and check signature, iss, aud, exp."""
    key_set = jwt.PyJWKSet.from_dict(jwks)
    kid = jwt.get_unverified_header(token)["kid"]
    key = key_set[kid]
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[key.algorithm_name],
        audience=audience,
        issuer=issuer,
        options={"require": ["iss", "sub", "aud", "iat", "exp"]},
    )
    return claims


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")

    def raw(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    return json.loads(raw(header)), json.loads(raw(payload)), raw(signature)


@pytest.fixture
def sign_count(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts real signatures made through sidecar.authz.assertion_issuer (a memo hit makes none)."""
    calls = [0]
    real: Callable[..., str] = jwt.encode

    def counting(*args: Any, **kwargs: Any) -> str:
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "encode", counting)  # the module sidecar.authz.assertion_issuer signs through
    yield calls


# --------------------------------------------------------------------------------------------------- signing


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_assertion_verifies_against_the_published_jwks(pems: dict[str, bytes], algorithm: str) -> None:
    issuer = issuer_for(algorithm, pems[algorithm])
    now = time.time()
    token = issuer.issue(RECORD, "App.Example.com:443", {}, now)
    assert token is not None
    claims = verify(token, issuer.jwks())
    assert claims == {
        "iss": ISSUER,
        "sub": "alice",
        "aud": HOST,
        "iat": int(now),
        "exp": int(now) + 60,
        "email": "alice@example.com",
        "roles": ["admin", "dev"],
        "sid": "s-handle-1",
    }


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_jws_header_names_alg_kid_and_typ(pems: dict[str, bytes], algorithm: str) -> None:
    token = issuer_for(algorithm, pems[algorithm]).issue(RECORD, HOST, {}, time.time())
    assert token is not None
    header, _, signature = segments(token)
    assert header == {"alg": algorithm, "kid": "k-" + algorithm.lower(), "typ": "JWT"}
    assert len(signature) == 64  # JOSE form (ES256: raw r||s, not DER), what Envoy's jwt_authn expects


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_jwks_verifies_over_json_as_a_verifier_fetches_it(pems: dict[str, bytes], algorithm: str) -> None:
    issuer = issuer_for(algorithm, pems[algorithm])
    token = issuer.issue(RECORD, HOST, {}, time.time())
    assert token is not None
    assert verify(token, json.loads(issuer.jwks_json()))["sub"] == "alice"


def test_header_is_the_configured_one(pems: dict[str, bytes]) -> None:
    issuer = AssertionIssuer(replace(SETTINGS, header="x-user-jwt"), [("k1", "EdDSA", pems["EdDSA"])])
    assert issuer.header == "x-user-jwt"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tampered_token_fails_verification(pems: dict[str, bytes], algorithm: str) -> None:
    issuer = issuer_for(algorithm, pems[algorithm])
    token = issuer.issue(RECORD, HOST, {}, time.time())
    assert token is not None
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin", "dev", "root"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        verify(f"{header}.{forged}.{signature}", issuer.jwks())


def test_token_signed_by_an_unpublished_key_fails_verification(pems: dict[str, bytes]) -> None:
    published = AssertionIssuer(SETTINGS, [("k1", "ES256", pems["ES256"])])
    impostor = AssertionIssuer(SETTINGS, [("k1", "ES256", new_key("ES256"))])  # same kid, other key
    token = impostor.issue(RECORD, HOST, {}, time.time())
    assert token is not None
    with pytest.raises(jwt.InvalidSignatureError):
        verify(token, published.jwks())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_audience_or_issuer_fails_verification(pems: dict[str, bytes], algorithm: str) -> None:
    issuer = issuer_for(algorithm, pems[algorithm])
    token = issuer.issue(RECORD, "other.example.com", {}, time.time())
    assert token is not None
    with pytest.raises(jwt.InvalidAudienceError):
        verify(token, issuer.jwks(), audience=HOST)
    with pytest.raises(jwt.InvalidIssuerError):
        verify(token, issuer.jwks(), audience="other.example.com", issuer="someone-else")


def test_expired_token_fails_verification(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    token = issuer.issue(RECORD, HOST, {}, time.time() - 61)
    assert token is not None
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(token, issuer.jwks())


# --------------------------------------------------------------------------------------------------- routes


def test_route_that_opts_out_gets_no_assertion(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    assert issuer.issue(RECORD, HOST, {CONTEXT_CLAIMS: "none"}, time.time()) is None


def test_no_audience_means_no_assertion(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    assert issuer.issue(RECORD, "", {}, time.time()) is None
    assert issuer.issue(RECORD, "::1", {}, time.time()) is None


def test_route_context_chooses_audience_and_claims(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("ES256", pems["ES256"])
    context = {CONTEXT_AUDIENCE: "billing", CONTEXT_CLAIMS: "sub,roles"}
    token = issuer.issue(RECORD, HOST, context, time.time())
    assert token is not None
    claims = verify(token, issuer.jwks(), audience="billing")
    assert claims.keys() == {"iss", "sub", "aud", "iat", "exp", "roles"}


def test_configured_audience_is_used_when_the_route_sets_none(pems: dict[str, bytes]) -> None:
    issuer = AssertionIssuer(replace(SETTINGS, audience="orders-api"), [("k1", "EdDSA", pems["EdDSA"])])
    token = issuer.issue(RECORD, HOST, {}, time.time())
    assert token is not None
    assert verify(token, issuer.jwks(), audience="orders-api")["aud"] == "orders-api"


# --------------------------------------------------------------------------------------------------- the JWKS


def test_jwks_publishes_every_key_signing_key_first(pems: dict[str, bytes]) -> None:
    issuer = AssertionIssuer(SETTINGS, [("new", "EdDSA", pems["EdDSA"]), ("old", "ES256", pems["ES256"])])
    assert issuer.signing_kid == "new"
    keys = issuer.jwks()["keys"]
    assert isinstance(keys, list)
    assert [(k["kid"], k["alg"], k["use"]) for k in keys] == [("new", "EdDSA", "sig"), ("old", "ES256", "sig")]


def test_jwks_carries_public_parts_only(pems: dict[str, bytes]) -> None:
    issuer = AssertionIssuer(SETTINGS, [("a", "EdDSA", pems["EdDSA"]), ("b", "ES256", pems["ES256"])])
    keys = issuer.jwks()["keys"]
    assert isinstance(keys, list)
    okp, ec_key = keys
    assert set(okp) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (okp["kty"], okp["crv"]) == ("OKP", "Ed25519")
    assert set(ec_key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (ec_key["kty"], ec_key["crv"]) == ("EC", "P-256")
    rendered = json.loads(issuer.jwks_json())
    for jwk in [*keys, *rendered["keys"]]:
        assert "d" not in jwk  # the private scalar of EC and OKP keys (RFC 7518 §6.2.2, RFC 8037 §2)
        assert not {"p", "q", "dp", "dq", "qi", "k"} & jwk.keys()
    assert b"PRIVATE" not in issuer.jwks_json()


def test_jwks_public_keys_match_the_private_keys(pems: dict[str, bytes]) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: PLC0415

    issuer = AssertionIssuer(SETTINGS, [("a", "EdDSA", pems["EdDSA"]), ("b", "ES256", pems["ES256"])])
    published = jwt.PyJWKSet.from_dict(issuer.jwks())
    for kid, algorithm in (("a", "EdDSA"), ("b", "ES256")):
        private = load_pem_private_key(pems[algorithm], password=None)
        expected = private.public_key().public_bytes(Encoding.DER, _spki())
        assert published[kid].key.public_bytes(Encoding.DER, _spki()) == expected


def _spki() -> Any:
    from cryptography.hazmat.primitives.serialization import PublicFormat  # noqa: PLC0415

    return PublicFormat.SubjectPublicKeyInfo


def test_jwks_returns_a_copy_the_caller_cannot_corrupt(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    first = issuer.jwks()
    keys = first["keys"]
    assert isinstance(keys, list)
    keys[0]["d"] = "leaked"
    again = issuer.jwks()["keys"]
    keys.clear()
    assert isinstance(again, list) and len(again) == 1 and "d" not in again[0]
    assert issuer.jwks()["keys"] == again


# --------------------------------------------------------------------------------------------------- rotation


def test_rotation_stages_each_verify_with_the_next_stage_jwks() -> None:
    k1, k2 = new_key("ES256"), new_key("EdDSA")
    stages = [
        AssertionIssuer(SETTINGS, [("k1", "ES256", k1)]),  # before
        AssertionIssuer(SETTINGS, [("k1", "ES256", k1), ("k2", "EdDSA", k2)]),  # 1. k2 added second: published
        AssertionIssuer(SETTINGS, [("k2", "EdDSA", k2), ("k1", "ES256", k1)]),  # 2. k2 moved first: it signs
        AssertionIssuer(SETTINGS, [("k2", "EdDSA", k2)]),  # 3. after the ttl, k1 removed
    ]
    now = time.time()
    tokens = [stage.issue(RECORD, HOST, {}, now) for stage in stages]
    assert [jwt.get_unverified_header(t)["kid"] for t in tokens if t] == ["k1", "k1", "k2", "k2"]
    for i, token in enumerate(tokens):
        assert token is not None
        assert verify(token, stages[i].jwks())["sub"] == "alice"
        if i + 1 < len(stages):
            claims = verify(token, stages[i + 1].jwks())
            assert (claims["aud"], claims["iss"], claims["exp"]) == (HOST, ISSUER, int(now) + 60)


def test_skipping_the_publish_step_breaks_verification() -> None:
    # Why step 1 exists: a verifier still holding the old JWKS cannot find the new kid.
    k1, k2 = new_key("ES256"), new_key("ES256")
    before = AssertionIssuer(SETTINGS, [("k1", "ES256", k1)])
    rushed = AssertionIssuer(SETTINGS, [("k2", "ES256", k2), ("k1", "ES256", k1)])
    token = rushed.issue(RECORD, HOST, {}, time.time())
    assert token is not None
    with pytest.raises(KeyError):
        verify(token, before.jwks())


# --------------------------------------------------------------------------------------------------- memoization


def test_same_session_reuses_its_token_until_half_the_ttl(pems: dict[str, bytes], sign_count: list[int]) -> None:
    issuer = issuer_for("ES256", pems["ES256"])
    start = 1_800_000_000.0
    first = issuer.issue(RECORD, HOST, {}, start)
    assert first == issuer.issue(RECORD, HOST, {}, start + 29.9)
    assert sign_count == [1]
    renewed = issuer.issue(RECORD, HOST, {}, start + 30.0)
    assert renewed is not None and renewed != first and sign_count == [2]
    assert segments(renewed)[1]["iat"] == int(start + 30)
    assert issuer.issue(RECORD, HOST, {}, start + 59.0) == renewed
    assert sign_count == [2]


def test_reused_token_keeps_the_times_of_the_cached_one(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    start = 1_800_000_000.0
    issuer.issue(RECORD, HOST, {}, start)
    again = issuer.issue(RECORD, HOST, {}, start + 20)
    assert again is not None
    _, claims, _ = segments(again)
    assert (claims["iat"], claims["exp"]) == (int(start), int(start) + 60)


@pytest.mark.parametrize(
    ("record", "host", "context"),
    [
        (replace(RECORD, roles=("admin",)), HOST, {}),  # a rotated session with fewer roles
        (replace(RECORD, email="new@example.com"), HOST, {}),
        (replace(RECORD, user_id="mallory"), HOST, {}),
        (replace(RECORD, session_id="s-handle-2"), HOST, {}),
        (RECORD, "other.example.com", {}),
        (RECORD, HOST, {CONTEXT_CLAIMS: "sub"}),
        (RECORD, HOST, {CONTEXT_AUDIENCE: "billing"}),
    ],
    ids=["roles", "email", "user", "session", "host", "claims", "route-audience"],
)
def test_any_change_to_a_claim_input_signs_a_new_token(
    pems: dict[str, bytes], sign_count: list[int], record: SessionRecord, host: str, context: dict[str, str]
) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    now = 1_800_000_000.0
    original = issuer.issue(RECORD, HOST, {}, now)
    changed = issuer.issue(record, host, context, now + 1)
    assert sign_count == [2] and changed != original


def test_equal_claim_choices_spelled_differently_share_a_token(pems: dict[str, bytes], sign_count: list[int]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    now = 1_800_000_000.0
    first = issuer.issue(RECORD, HOST, {CONTEXT_CLAIMS: "roles,sub"}, now)
    assert issuer.issue(RECORD, HOST, {CONTEXT_CLAIMS: " ROLES "}, now + 1) == first
    assert sign_count == [1]


def test_clock_going_back_signs_afresh(pems: dict[str, bytes], sign_count: list[int]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    now = 1_800_000_000.0
    issuer.issue(RECORD, HOST, {}, now)
    earlier = issuer.issue(RECORD, HOST, {}, now - 5)
    assert earlier is not None and sign_count == [2]
    assert segments(earlier)[1]["iat"] == int(now - 5)  # never an iat in the verifier's future


def test_memo_is_a_bounded_lru(pems: dict[str, bytes], sign_count: list[int]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"], cache_size=3)
    now = 1_800_000_000.0
    sessions = [replace(RECORD, session_id=f"s{i}") for i in range(4)]
    for record in sessions[:3]:
        issuer.issue(record, HOST, {}, now)
    issuer.issue(sessions[0], HOST, {}, now)  # s0 is now the most recently used
    issuer.issue(sessions[3], HOST, {}, now)  # evicts s1, the least recently used
    assert issuer.cached == 3 and sign_count == [4]
    issuer.issue(sessions[0], HOST, {}, now)
    assert sign_count == [4]
    issuer.issue(sessions[1], HOST, {}, now)
    assert sign_count == [5] and issuer.cached == 3


def test_memo_holds_at_most_the_default_bound(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    now = 1_800_000_000.0
    for i in range(assertions.DEFAULT_CACHE_SIZE + 50):
        issuer.issue(replace(RECORD, session_id=f"s{i}"), HOST, {}, now)
    assert issuer.cached == assertions.DEFAULT_CACHE_SIZE == 10_000


def test_cache_size_zero_signs_every_time(pems: dict[str, bytes], sign_count: list[int]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"], cache_size=0)
    for _ in range(3):
        issuer.issue(RECORD, HOST, {}, 1_800_000_000.0)
    assert sign_count == [3] and issuer.cached == 0


async def test_concurrent_tasks_get_consistent_verifiable_tokens(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("ES256", pems["ES256"], cache_size=8)
    now = time.time()
    records = [replace(RECORD, session_id=f"s{i % 16}", user_id=f"u{i % 16}") for i in range(200)]

    async def one(record: SessionRecord) -> tuple[str, str | None]:
        await asyncio.sleep(0)
        return record.user_id, issuer.issue(record, HOST, {}, now)

    results = await asyncio.gather(*(one(record) for record in records))
    jwks = issuer.jwks()
    for user_id, token in results:
        assert token is not None and verify(token, jwks)["sub"] == user_id
    assert issuer.cached == 8


# --------------------------------------------------------------------------------------------------- size budget


def test_a_typical_assertion_is_well_under_a_kilobyte(pems: dict[str, bytes]) -> None:
    for algorithm in ALGORITHMS:
        token = issuer_for(algorithm, pems[algorithm]).issue(RECORD, HOST, {}, time.time())
        assert token is not None and len(token) < 600


def test_an_assertion_over_the_header_budget_denies_instead_of_reaching_the_upstream(pems: dict[str, bytes]) -> None:
    issuer = issuer_for("EdDSA", pems["EdDSA"])
    request = RequestView(method="GET", scheme="https", host=HOST, path="/orders", headers=())
    inspection = inspect(EDGE, request)
    roles = tuple(f"role-{i:02d}-" + "r" * 40 for i in range(MAX_ROLES))  # ~3 KiB of roles, ~4 KiB signed
    big = replace(RECORD, roles=roles)
    token = issuer.issue(big, HOST, {}, time.time())
    assert token is not None
    small_budget = replace(EDGE, max_header_bytes=6000)
    assert isinstance(allow(small_budget, inspection, big), Allow)  # the plain headers alone fit...
    decision = allow(small_budget, inspection, big, ((issuer.header, token),))
    assert isinstance(decision, Deny) and decision.reason == "identity_too_large"  # ...not with the assertion
    # The route can keep the assertion small instead: roles left out.
    lean = issuer.issue(big, HOST, {CONTEXT_CLAIMS: "sub,sid"}, time.time())
    assert lean is not None
    assert isinstance(allow(small_budget, inspection, big, ((issuer.header, lean),)), Allow)


# --------------------------------------------------------------------------------------------------- keys


def test_from_config_signs_with_the_first_key_and_publishes_all(tmp_path: Path) -> None:
    files = []
    for kid, algorithm in (("new", "EdDSA"), ("old", "ES256")):
        path = tmp_path / f"{kid}.pem"
        path.write_bytes(new_key(algorithm))
        files.append({"kid": kid, "private_key_file": str(path)})
    config = AssertionConfig.model_validate({"enabled": True, "keys": files, "ttl": 120, "audience": "orders-api"})
    issuer = AssertionIssuer.from_config(config)
    token = issuer.issue(RECORD, HOST, {}, time.time())
    assert token is not None
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": "new", "typ": "JWT"}
    claims = verify(token, issuer.jwks(), audience="orders-api")
    assert claims["exp"] - claims["iat"] == 120
    assert issuer.header == "x-user-assertion"
    keys = issuer.jwks()["keys"]
    assert isinstance(keys, list) and [k["kid"] for k in keys] == ["new", "old"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([], "at least one key"),
        ([("k1", "RS256", "ES256")], "RS256"),
        ([("k1", "ES256", "EdDSA")], "EC P-256"),
        ([("k1", "EdDSA", "ES256")], "Ed25519"),
        ([("k1", "ES256", "P-384")], "EC P-256"),
        ([("k1", "ES256", "secp112r1")], "unencrypted"),
        ([("k1", "ES256", "encrypted")], "unencrypted"),
        ([("k1", "ES256", "garbage")], "unencrypted"),
        ([("k1", "ES256", "ES256"), ("k1", "EdDSA", "EdDSA")], "distinct"),
        ([("", "ES256", "ES256")], "non-empty"),
    ],
    ids=[
        "none",
        "rs256",
        "es256-with-ed25519",
        "eddsa-with-p256",
        "p384",
        "secp112r1",
        "encrypted",
        "garbage",
        "dup-kid",
        "no-kid",
    ],
)
def test_unusable_keys_are_refused(pems: dict[str, bytes], keys: list[tuple[str, str, str]], message: str) -> None:
    def material(kind: str) -> bytes:
        if kind in pems:
            return pems[kind]
        if kind == "P-384":
            key = ec.generate_private_key(ec.SECP384R1())
            return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        if kind == "secp112r1":
            return SECP112R1_PEM
        if kind == "encrypted":
            key = ec.generate_private_key(ec.SECP256R1())
            return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw"))
        return b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"

    with pytest.raises(ValueError, match=message):
        AssertionIssuer(SETTINGS, [(kid, algorithm, material(kind)) for kid, algorithm, kind in keys])


@pytest.mark.parametrize("ttl", [0.5, 301.0])
def test_issuer_refuses_a_ttl_outside_the_bound(pems: dict[str, bytes], ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        AssertionIssuer(replace(SETTINGS, ttl=ttl), [("k1", "EdDSA", pems["EdDSA"])])


# ----------------------------------------------------------------------------------------- loading a key


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_load_private_key_names_the_algorithm_the_key_signs_with(pems: dict[str, bytes], algorithm: str) -> None:
    found, key = load_private_key(pems[algorithm])
    assert found == algorithm
    assert public_jwk("k1", found, key)["alg"] == algorithm


@pytest.mark.parametrize(
    ("pem", "error", "message"),
    [
        (b"not a key", UnusableKey, "is not a usable private key: not a PEM key"),
        (SECP112R1_PEM, UnusableKey, "is not a usable private key: its algorithm or curve is not supported"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pw")
            ),
            UnusableKey,
            "is not a usable private key: it is encrypted",
        ),
        (
            ec.generate_private_key(ec.SECP384R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
            UnsupportedKey,
            "must hold an EC P-256 (ES256) or Ed25519 (EdDSA) private key",
        ),
    ],
    ids=["garbage", "unknown-curve", "encrypted", "p384"],
)
def test_load_private_key_says_why_a_key_cannot_sign(pem: bytes, error: type[ValueError], message: str) -> None:
    with pytest.raises(error) as info:
        load_private_key(pem)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("kid", ["k/1", "k 1", "k" * 65])
def test_issuer_refuses_a_key_id_the_config_refuses(pems: dict[str, bytes], kid: str) -> None:
    with pytest.raises(ValueError, match="invalid key id") as info:
        AssertionIssuer(SETTINGS, [(kid, "EdDSA", pems["EdDSA"])])
    assert len(str(info.value)) < 200
