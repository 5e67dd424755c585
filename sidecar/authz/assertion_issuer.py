"""The identity assertion issuer: signs the claims of ``sidecar.core.assertion`` (ES256 or EdDSA) and publishes
the public keys as a JWK Set for ``/.well-known/jwks.json``.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from sidecar.core.assertion import (
    AssertionSettings,
    assertion_claims,
    audience_for,
    check_ttl,
    claims_for,
    kid_problem,
)
from sidecar.core.session import SessionRecord, shown

if TYPE_CHECKING:
    from sidecar.config import AssertionConfig

ALGORITHMS = ("ES256", "EdDSA")
DEFAULT_CACHE_SIZE = 10_000

# (session_id, user_id, email, roles, audience, claims): everything a token's claims depend on besides time.
_CacheKey = tuple[str, str, str | None, tuple[str, ...], str, tuple[str, ...]]
_SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class UnusableKey(ValueError):
    """PEM bytes that hold no private key this module can load (garbage, encrypted, an unknown curve)."""


class UnsupportedKey(ValueError):
    """A private key of a type assertions are not signed with (RSA, P-384, ...)."""


def load_private_key(pem: bytes) -> tuple[str, _SigningKey]:
    """The algorithm ``pem``'s private key signs with (EC P-256: ES256, Ed25519: EdDSA) and the key.

    The one loader of assertion keys: the config calls it to refuse an unusable key file at load time, the issuer
    to sign. The messages complete a sentence naming the key ("KEY FILE is not a usable private key: ...") and
    never quote the PEM.
    """
    try:
        key = load_pem_private_key(pem, password=None)
    except UnsupportedAlgorithm:  # e.g. an EC key on a curve OpenSSL lacks
        raise UnusableKey(
            "is not a usable private key: its algorithm or curve is not supported (use EC P-256 or Ed25519)"
        ) from None
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted (use an unencrypted PKCS#8 key)" if "encrypted" in str(exc) else "not a PEM key"
        raise UnusableKey(f"is not a usable private key: {reason}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256", key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA", key
    raise UnsupportedKey("must hold an EC P-256 (ES256) or Ed25519 (EdDSA) private key")


def _load_key(kid: str, algorithm: str, pem: bytes) -> _SigningKey:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"assertion key {kid!r}: algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    try:
        found, key = load_private_key(pem)
    except UnusableKey:
        raise ValueError(f"assertion key {kid!r}: not a usable unencrypted PEM private key") from None
    except UnsupportedKey:
        found = ""  # RSA, P-384, ...: answered below like a key of the other supported type
    if found != algorithm:
        expected = "an EC P-256" if algorithm == "ES256" else "an Ed25519"
        raise ValueError(f"assertion key {kid!r}: {algorithm} needs {expected} private key")
    return key


def public_jwk(kid: str, algorithm: str, key: _SigningKey) -> dict[str, str]:
    """The public half of ``key`` as a JWK (RFC 7517/7518/8037); built field by field so no private part leaks."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = key.public_key().public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
            "kid": kid,
            "alg": algorithm,
            "use": "sig",
        }
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "alg": algorithm, "use": "sig"}


class AssertionIssuer:
    """Signs identity assertions with the first key and publishes every key.

    **Key rotation without downtime** (``assertion.keys``; each step is a config change and a restart/rollout):

    1. Add the new key *second*: ``[old, new]``. The old key still signs; both are published. Wait until every
       verifier has refetched the JWKS: the admin listener serves it with ``cache-control: max-age=300``, but
       istiod refetches a ``jwksUri`` only every 20 minutes by default (``PILOT_JWT_PUB_KEY_REFRESH_INTERVAL``),
       so wait for the slowest cache you have.
    2. Move it *first*: ``[new, old]``. New assertions are signed with it; those signed with the old key before
       the rollout still verify, because the old key is still published.
    3. After ``assertion.ttl`` (at most 5 minutes) plus the rollout time, remove the old key: ``[new]``.

    A token of each stage verifies against the JWKS of the next one, so verifiers never see an unknown ``kid``.

    **Memoization.** Signing costs about 40 µs (ES256 and EdDSA alike, measured on the 2-core machine of
    ``bench/results/assertion.md``), most of the ~50 µs a whole Check may cost. So the token of a
    (session id, user id, email, roles, audience, claims) is kept in a bounded LRU (``cache_size`` entries,
    ~1 KiB each) and reused while at least half of its ttl remains; its ``iat``/``exp`` are then those of the
    cached token. The trade-off: an upstream sees the same token on several requests (which it could replay
    anyway until ``exp``), and a token's remaining life is between ttl/2 and ttl instead of always ttl. Nothing
    a token says can go stale: the cache key holds every claim's input, so a rotated session with new roles
    gets a new token, and a revoked session gets no allow, hence no token. Entries are evicted
    least-recently-used first; a ``now`` earlier than a cached ``iat`` (the clock went back) signs afresh.

    Not thread-safe by design and needs not be: :meth:`issue` never awaits, so concurrent asyncio tasks run it
    one at a time; each worker process has its own issuer.
    """

    def __init__(
        self,
        settings: AssertionSettings,
        keys: Sequence[tuple[str, str, bytes]],
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if not keys:
            raise ValueError("an assertion issuer needs at least one key")
        if cache_size < 0:
            raise ValueError("cache_size must be 0 (no memoization) or more")
        check_ttl(settings.ttl)
        if not settings.issuer:
            raise ValueError("an assertion issuer needs a non-empty issuer")
        kids = [kid for kid, _, _ in keys]
        if len(set(kids)) != len(kids) or not all(kids):
            raise ValueError(f"assertion key ids must be non-empty and distinct: {[shown(kid) for kid in kids]}")
        for kid in kids:
            if (problem := kid_problem(kid)) is not None:
                raise ValueError(f"assertion key {shown(kid)}: {problem}")
        loaded = [(kid, algorithm, _load_key(kid, algorithm, pem)) for kid, algorithm, pem in keys]
        self._settings = settings
        self._kid, self._algorithm, self._key = loaded[0]
        self._jws_header = {"kid": self._kid, "typ": "JWT"}  # PyJWT adds "alg"
        self._jwks: dict[str, object] = {"keys": [public_jwk(kid, alg, key) for kid, alg, key in loaded]}
        self._jwks_json = json.dumps(self._jwks, separators=(",", ":"), sort_keys=True).encode("ascii")
        self._cache_size = cache_size
        self._cache: OrderedDict[_CacheKey, tuple[str, int, float]] = OrderedDict()
        self._lock = threading.Lock()  # issued from gRPC handler threads and the event loop at once

    @classmethod
    def from_config(cls, config: AssertionConfig) -> AssertionIssuer:
        settings = AssertionSettings(
            header=config.header,
            issuer=config.issuer,
            ttl=config.ttl,
            claims=config.claims,
            audience=config.audience,
        )
        return cls(settings, [(key.kid, key.algorithm, key.private_key_pem) for key in config.keys])

    @property
    def header(self) -> str:
        return self._settings.header

    @property
    def settings(self) -> AssertionSettings:
        return self._settings

    @property
    def signing_kid(self) -> str:
        return self._kid

    @property
    def cached(self) -> int:
        """How many tokens are memoized now."""
        return len(self._cache)

    def issue(self, record: SessionRecord, host: str, context: Mapping[str, str], now: float) -> str | None:
        """The compact JWT for ``record`` on this request, or None when the route opts out (``assertion_claims:
        none``) or there is no audience to give (see ``sidecar.core.assertion.audience_for``)."""
        settings = self._settings
        claims = claims_for(settings, context)
        if claims is None:
            return None
        audience = audience_for(settings, host, context)
        if audience is None:
            return None
        key: _CacheKey = (record.session_id, record.user_id, record.email, record.roles, audience, claims)
        cache = self._cache
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                token, iat, renew_at = hit
                if iat <= now < renew_at:
                    cache.move_to_end(key)
                    return token
        payload = assertion_claims(
            record, issuer=settings.issuer, audience=audience, now=now, ttl=settings.ttl, claims=claims
        )
        token = jwt.encode(payload, self._key, algorithm=self._algorithm, headers=self._jws_header)
        issued, expires = payload["iat"], payload["exp"]
        if self._cache_size and isinstance(issued, int) and isinstance(expires, int):  # ints by construction
            with self._lock:
                cache[key] = (token, issued, expires - settings.ttl / 2)
                cache.move_to_end(key)  # a renewed entry is the most recently used one
                while len(cache) > self._cache_size:
                    cache.popitem(last=False)
        return token

    def jwks(self) -> dict[str, object]:
        """The JWK Set of every configured key (public parts only), signing key first."""
        keys = self._jwks["keys"]
        assert isinstance(keys, list)
        return {"keys": [dict(jwk) for jwk in keys]}

    def jwks_json(self) -> bytes:
        """:meth:`jwks` as compact JSON, rendered once (the admin listener serves it as is)."""
        return self._jwks_json
