"""assertion: the optional signed identity assertion (a JWT) added to every allow that carries an identity.

The claim names, the ttl bound and the key-id rule are ``sidecar.core.assertion``'s; a key file is loaded by
``sidecar.authz.assertion_issuer.load_private_key``, the loader the issuer signs with.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sidecar.authz.assertion_issuer import UnsupportedKey, UnusableKey, load_private_key
from sidecar.config.files import FilePath, FileProblem, read_file, secrets_from_files, shown_path
from sidecar.config.models.base import Duration, Problem, Problems, Section, has_control
from sidecar.config.models.headers import header_name
from sidecar.core import assertion as rules
from sidecar.core.session import shown

ASSERTION_CLAIMS = rules.CLAIM_NAMES
MAX_ASSERTION_TTL = rules.MAX_TTL


def _private_key(path: str) -> dict[str, Any]:
    pem = read_file(path)
    try:
        algorithm, _ = load_private_key(pem)
    except (UnusableKey, UnsupportedKey) as exc:
        raise FileProblem(f"{shown_path(path)} {exc}") from None
    return {"private_key_pem": pem, "algorithm": algorithm}


class AssertionKey(Section):
    """A signing key of the identity assertion: a PEM private key (EC P-256 → ES256, Ed25519 → EdDSA)."""

    kid: str
    private_key_file: FilePath
    # Read from private_key_file at load time; never printed.
    private_key_pem: bytes = Field(default=b"", repr=False, exclude=True)
    algorithm: str = Field(default="", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _key_from_its_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # private_key_pem and algorithm are read from the file, never written in the config.
        derived = [key for key in ("private_key_pem", "algorithm") if key in data]
        if derived:
            raise Problems([((key,), "unknown key (read from private_key_file)") for key in derived])
        return secrets_from_files(data, {"private_key_file": _private_key})

    @field_validator("kid")
    @classmethod
    def _kid(cls, value: str) -> str:
        if (problem := rules.kid_problem(value)) is not None:
            raise ValueError(problem)
        return value


def _assertion_key(value: Any) -> Any:
    # "KID:PATH" is the short form (and the one an environment variable can hold), like token.keys.
    if isinstance(value, str):
        kid, sep, path = value.partition(":")
        if not sep or not path:
            raise ValueError("must be {kid: ..., private_key_file: ...} or 'KID:PATH'")
        return {"kid": kid, "private_key_file": path}
    return value


class AssertionConfig(Section):
    """The optional signed identity assertion (a JWT) added to every allow that carries an identity."""

    enabled: bool = False
    header: str = "x-user-assertion"
    # The first key signs; every key is published at /.well-known/jwks.json (rotate: add second, then move first).
    keys: tuple[Annotated[AssertionKey, BeforeValidator(_assertion_key)], ...] = ()
    issuer: str = "session-sidecar"
    ttl: Duration = 60.0
    claims: tuple[str, ...] = ASSERTION_CLAIMS
    audience: str = ""  # "": the request's host; per route: Envoy context_extensions assertion_audience

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        return header_name(value)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: float) -> float:
        if (problem := rules.ttl_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("claims")
    @classmethod
    def _claims(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[Problem] = [((i,), p) for i, claim in enumerate(value) if (p := rules.claim_problem(claim))]
        if problems:
            raise Problems(problems)
        if (problem := rules.claims_problem(value)) is not None:
            raise ValueError(problem)
        return tuple(dict.fromkeys(value))

    @field_validator("issuer", "audience")
    @classmethod
    def _text(cls, value: str) -> str:
        if has_control(value) or len(value) > 256:
            raise ValueError("must be at most 256 characters without control characters")
        return value

    @field_validator("keys")
    @classmethod
    def _unique_keys(cls, value: tuple[AssertionKey, ...]) -> tuple[AssertionKey, ...]:
        seen: set[str] = set()
        problems: list[Problem] = []
        for i, key in enumerate(value):
            if key.kid in seen:
                problems.append(((i, "kid"), f"duplicate key id {shown(key.kid)}"))
            seen.add(key.kid)
        if problems:
            raise Problems(problems)
        return value

    @model_validator(mode="after")
    def _keys_when_enabled(self) -> AssertionConfig:
        if self.enabled and not self.keys:
            raise Problems(
                [
                    (
                        ("keys",),
                        "at least one key is required when assertion.enabled is true "
                        "(session-sidecar assertion keygen writes one)",
                    )
                ]
            )
        if not self.issuer:
            raise Problems([(("issuer",), "must not be empty")])
        return self
