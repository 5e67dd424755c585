"""cookie, session and token: cookie name, lifetimes, token and encryption keys."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sidecar.config import load_config, redacted
from sidecar.core.tokens import KID_RULE, MIN_SECRET_BYTES, KeyRing, is_kid, secret_problem
from tests.unit.config.support import OTHER, SECRET, SECRET_BYTES, only_problem, problems_of, write


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cookie: {name: 'a;b'}", "cookie.name: invalid cookie name 'a;b': must be an RFC 6265 token"),
        ("cookie: {name: 'a=b'}", "cookie.name: invalid cookie name 'a=b'"),
        ("cookie: {name: ''}", "cookie.name: invalid cookie name ''"),
        ('cookie: {name: "s\\u00e9ssion"}', "cookie.name: invalid cookie name"),
        (
            "session: {idle_timeout: 13h}",
            "session.idle_timeout: 13h exceeds session.absolute_timeout (12h); it must not",
        ),
        ("token: {keys: ['k1:c2hvcnQ']}", "token.keys[0]: the secret is 5 bytes; at least 32"),
        ("token: {keys: ['nocolon']}", "token.keys[0]: must be 'KID:SECRET'"),
        ("token: {keys: [':" + SECRET + "']}", "token.keys[0]: invalid key id: 1-16 characters"),
        ("token: {keys: ['waytoolongkeyid_17:" + SECRET + "']}", "token.keys[0]: invalid key id"),
        ("token: {keys: ['k1:not+base64/']}", "token.keys[0]: the secret (after the ':') is not base64url"),
        ("token: {keys: [{kid: k1}]}", "token.keys[0]: must be a 'KID:SECRET' string"),
        (f"token: {{keys: ['a:{SECRET}', 'a:{OTHER}']}}", "token.keys[1]: duplicate key id (the same as entry 0)"),
    ],
)
def test_invalid_values_are_reported_with_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith(expected), problem
    assert "pydantic" not in problem


def test_problems_never_echo_a_token_secret(tmp_path: Path) -> None:
    short = base64.urlsafe_b64encode(b"s3cr3t-value").decode()
    found = problems_of(environ={"SIDECAR_TOKEN__KEYS": f"k1:{short},{SECRET}"})
    assert len(found) == 2
    assert all(short not in p and SECRET not in p for p in found)


AES_KEY = base64.urlsafe_b64encode(b"e" * 32).decode()


def test_encryption_keys_need_exactly_32_bytes_and_are_redacted() -> None:
    config = load_config(environ={"SIDECAR_SESSION__ENCRYPTION_KEYS": f"e1:{AES_KEY}"})
    assert [(k.kid, k.secret) for k in config.session.encryption_keys] == [("e1", b"e" * 32)]
    assert redacted(config)["session"]["encryption_keys"] == ["e1:<redacted>"]  # type: ignore[index]
    long_key = base64.urlsafe_b64encode(b"e" * 48).decode()
    problem = only_problem(environ={"SIDECAR_SESSION__ENCRYPTION_KEYS": f"e1:{long_key}"})
    assert "session.encryption_keys[0]" in problem and "exactly 32" in problem


def test_negative_session_cap_and_replica_count_are_errors() -> None:
    found = problems_of(environ={"SIDECAR_SESSION__MAX_PER_USER": "-1", "SIDECAR_REDIS__WAIT_REPLICAS": "-2"})
    assert any(p.startswith("session.max_per_user") for p in found)
    assert any(p.startswith("redis.wait_replicas") for p in found)


@pytest.mark.parametrize("key", ["IDLE_TIMEOUT", "ABSOLUTE_TIMEOUT"])
def test_a_session_timeout_longer_than_a_session_may_live_is_refused(key: str) -> None:
    # The core refuses such a session at every create; the config refuses it at load.
    environ = {f"SIDECAR_SESSION__{key}": "401d", "SIDECAR_SESSION__ABSOLUTE_TIMEOUT": "401d"}
    assert f"session.{key.lower()}: must be at most 400 days" in problems_of(environ=environ)[0]
    assert load_config(environ={"SIDECAR_SESSION__ABSOLUTE_TIMEOUT": "400d"}).session.absolute_timeout == 400 * 86400


@pytest.mark.parametrize("kid", ["k", "K-1_x", "k" * 16, "", "k" * 17, "k.1", "k/1", "k\u00e9"])
def test_a_token_key_id_is_accepted_exactly_when_a_key_ring_accepts_it(kid: str) -> None:
    environ = {"SIDECAR_TOKEN__KEYS": f"{kid}:{SECRET}"}
    if is_kid(kid):
        assert load_config(environ=environ).token.keys[0].kid == kid
        assert KeyRing.of([(kid, SECRET_BYTES)]).signing_kid == kid
    else:
        assert only_problem(environ=environ).startswith(f"token.keys[0]: invalid key id: {KID_RULE}")
        with pytest.raises(ValueError, match="key id"):
            KeyRing.of([(kid, SECRET_BYTES)])


def test_a_token_secret_shorter_than_a_key_ring_needs_is_refused_with_the_rings_words() -> None:
    short = base64.urlsafe_b64encode(b"s" * (MIN_SECRET_BYTES - 1)).decode()
    problem = only_problem(environ={"SIDECAR_TOKEN__KEYS": f"k1:{short}"})
    assert problem.startswith(f"token.keys[0]: the secret {secret_problem(b's' * (MIN_SECRET_BYTES - 1))}")


def test_a_token_secret_with_more_padding_than_base64_needs_is_refused() -> None:
    problem = only_problem(environ={"SIDECAR_TOKEN__KEYS": f"k1:{SECRET}==="})
    assert problem == "token.keys[0]: the secret (after the ':') is not base64url (from SIDECAR_TOKEN__KEYS)"
