"""assertion: keys loaded from their files, claims, ttl, and the header every request is stripped of."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sidecar.authz.assertion_issuer import AssertionIssuer
from sidecar.config import load_config, redacted
from sidecar.core.assertion import MAX_TTL, MIN_TTL
from tests.unit.config.support import only_problem, problems_of, write


def _pem(key: object) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())  # type: ignore[attr-defined]


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "es256": ec.generate_private_key(ec.SECP256R1()),
        "eddsa": ed25519.Ed25519PrivateKey.generate(),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    paths = {}
    for name, key in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(_pem(key))
    paths["garbage"] = tmp_path / "garbage.pem"
    paths["garbage"].write_text("not a key")
    return paths


def test_assertion_keys_load_with_their_algorithm_from_the_key_type(tmp_path: Path, key_files: dict[str, Path]) -> None:
    text = (
        "assertion:\n  enabled: true\n  keys:\n"
        f"  - {{kid: new, private_key_file: {key_files['eddsa']}}}\n"
        f"  - {{kid: old, private_key_file: {key_files['es256']}}}\n"
    )
    config = load_config(write(tmp_path, text), environ={})
    assert [(k.kid, k.algorithm) for k in config.assertion.keys] == [("new", "EdDSA"), ("old", "ES256")]
    assert config.assertion.keys[0].private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    shown = yaml.safe_dump(redacted(config))
    assert "BEGIN PRIVATE KEY" not in shown and str(key_files["eddsa"]) in shown


def test_assertion_keys_can_come_from_the_environment_as_kid_colon_path(key_files: dict[str, Path]) -> None:
    config = load_config(
        environ={"SIDECAR_ASSERTION__ENABLED": "true", "SIDECAR_ASSERTION__KEYS": f"k1:{key_files['es256']}"}
    )
    assert [k.kid for k in config.assertion.keys] == ["k1"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("p384", "must hold an EC P-256 (ES256) or Ed25519 (EdDSA) private key"),
        ("rsa", "must hold an EC P-256 (ES256) or Ed25519 (EdDSA) private key"),
        ("garbage", "is not a usable private key: not a PEM key"),
    ],
)
def test_unusable_assertion_keys_are_named(tmp_path: Path, key_files: dict[str, Path], name: str, message: str) -> None:
    text = f"assertion:\n  enabled: true\n  keys: [{{kid: k1, private_key_file: {key_files[name]}}}]\n"
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith("assertion.keys[0].private_key_file:") and message in problem


def test_a_missing_assertion_key_file_is_named(tmp_path: Path) -> None:
    text = f"assertion:\n  keys: [{{kid: k1, private_key_file: {tmp_path / 'nope.pem'}}}]\n"
    assert "cannot read" in only_problem(write(tmp_path, text))


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("enabled: true", "assertion.keys: at least one key is required"),
        ("ttl: 10m", "assertion.ttl: must be between 1s and 5m"),
        ("claims: [sub, phone]", "assertion.claims[1]: unknown claim 'phone'"),
        ("claims: [email]", "assertion.claims: must include sub"),
        ("issuer: ''", "assertion.issuer: must not be empty"),
        ("header: X-Upper", "assertion.header: invalid header name"),
    ],
)
def test_bad_assertion_settings_are_named(tmp_path: Path, section: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, f"assertion:\n  {section}\n"))
    assert problem.startswith(expected), problem


def test_an_enabled_assertion_header_must_be_stripped_from_client_requests(
    tmp_path: Path, key_files: dict[str, Path]
) -> None:
    keys = f"[{{kid: k1, private_key_file: {key_files['es256']}}}]"
    outside = f"assertion: {{enabled: true, header: x-identity, keys: {keys}}}\n"
    assert "so a client-supplied (replayed) assertion would reach the upstream" in only_problem(
        write(tmp_path, outside)
    )
    clash = f"assertion: {{enabled: true, header: x-user-id, keys: {keys}}}\n"
    assert "same header as headers.user_id" in only_problem(write(tmp_path, clash))


def test_derived_assertion_key_fields_cannot_be_set(tmp_path: Path, key_files: dict[str, Path]) -> None:
    text = f"assertion:\n  keys: [{{kid: k1, private_key_file: {key_files['es256']}, algorithm: none}}]\n"
    assert (
        only_problem(write(tmp_path, text)) == "assertion.keys[0].algorithm: unknown key (read from private_key_file)"
    )


def test_a_bad_key_id_and_an_unusable_key_file_are_reported_together(
    tmp_path: Path, key_files: dict[str, Path]
) -> None:
    text = f"assertion:\n  keys: [{{kid: k/1, private_key_file: {key_files['garbage']}}}]\n"
    found = problems_of(write(tmp_path, text))
    assert found == [
        "assertion.keys[0].kid: invalid key id: 1-64 characters of A-Z a-z 0-9 _ . -",
        f"assertion.keys[0].private_key_file: {str(key_files['garbage'])!r} is not a usable private key: not a PEM key",
    ]


def test_an_unknown_claim_is_quoted_cut_short(tmp_path: Path) -> None:
    problem = only_problem(write(tmp_path, f"assertion:\n  claims: [sub, {'phone' * 20_000}]\n"))
    assert problem.startswith("assertion.claims[1]: unknown claim 'phonephone") and len(problem) < 200, problem[:300]


@pytest.mark.parametrize("ttl", ["1s", "5m"])
def test_the_ttl_bounds_are_the_cores(tmp_path: Path, ttl: str) -> None:
    assert load_config(write(tmp_path, f"assertion:\n  ttl: {ttl}\n"), environ={}).assertion.ttl in (MIN_TTL, MAX_TTL)


def test_a_key_the_config_accepts_is_one_the_issuer_signs_with(tmp_path: Path, key_files: dict[str, Path]) -> None:
    text = f"assertion:\n  enabled: true\n  keys: [{{kid: 2026-01.es256_a, private_key_file: {key_files['es256']}}}]\n"
    issuer = AssertionIssuer.from_config(load_config(write(tmp_path, text), environ={}).assertion)
    assert issuer.signing_kid == "2026-01.es256_a"
