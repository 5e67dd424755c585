"""The claims of the signed identity assertion (a JWT the upstream can verify instead of trusting plain headers).

Pure: no clock reads (``now`` is passed in), no I/O, no crypto. ``sidecar.authz.assertion_issuer`` signs what this
module decides.

Per route, Envoy's ``ExtAuthzPerRoute.check_settings.context_extensions`` can set:

- ``assertion_audience``: the ``aud`` for that route (wins over ``assertion.audience`` and the request host);
- ``assertion_claims``: a comma-separated subset of ``sub,email,roles,sid`` that replaces ``assertion.claims``
  for that route; ``none`` means no assertion on that route.

Audience rules (:func:`audience_for`): the route's ``assertion_audience``, else ``assertion.audience``, else the
request's ``:authority`` lower-cased without its port (``App.Example.com:8443`` → ``app.example.com``,
``[::1]:8080`` → ``[::1]``; one trailing dot dropped). A host that is empty, malformed or longer than a DNS name
gives no audience, and then no assertion at all: a token without ``aud`` could be replayed to any upstream that
trusts this issuer.

Claim names (:func:`claims_for`): compared case-insensitively after trimming; ``sub`` is always included (an
assertion without a subject identifies no one); unknown names are ignored rather than refused, because Envoy
config is not validated by the sidecar and a typo must not turn into a denial of every request on the route
(the result is never wider than the names given, plus ``sub``). An empty value means "not set".

Claims (:func:`assertion_claims`): ``iss``, ``sub`` (the user id), ``aud``, ``iat``, ``exp`` always; ``email``
(when chosen and known), ``roles`` (when chosen; a JSON array, possibly empty), ``sid`` (when chosen: the
session's non-secret handle, never its token). No ``nbf``: it would equal ``iat`` and only add bytes and one
more clock-skew failure at verifiers. No ``jti``: the issuer reuses one token for many requests (see
``sidecar.authz.assertion_issuer``), so an id would not name a request, and verifiers dedupe nothing on a 5-minute
token.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sidecar.core.durations import format_duration
from sidecar.core.session import SessionRecord, shown

# The config (assertion.claims, assertion.ttl, assertion.keys) validates with these rules and names.
CLAIM_NAMES = ("sub", "email", "roles", "sid")
SUBJECT = "sub"
MAX_TTL = 300.0  # an assertion is a bearer credential: keep the replay window short
MIN_TTL = 1.0
_KID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

CONTEXT_AUDIENCE = "assertion_audience"
CONTEXT_CLAIMS = "assertion_claims"
NO_ASSERTION = "none"

MAX_HOST_LENGTH = 255  # RFC 1035 names are at most 253 octets; anything longer is not a host we serve


@dataclass(frozen=True, slots=True)
class AssertionSettings:
    header: str
    issuer: str
    ttl: float
    claims: tuple[str, ...]
    audience: str  # "": derive it from the request host


def audience_for(settings: AssertionSettings, host: str, context: Mapping[str, str]) -> str | None:
    """The ``aud`` of the assertion for this request, or None when there is none to give (then no assertion)."""
    routed = context.get(CONTEXT_AUDIENCE)
    if routed:
        return routed
    if settings.audience:
        return settings.audience
    return host_audience(host)


@functools.lru_cache(maxsize=1024)
def host_audience(host: str) -> str | None:
    """``host`` (an HTTP ``:authority``) as an audience: lower-cased, without port; None when it is not a host.

    Memoized because the same few hosts arrive on every request; the bound keeps a client that sends random
    hosts from growing it.
    """
    if not host or len(host) > MAX_HOST_LENGTH:
        return None
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :] if end > 0 else ""
        if end <= 1 or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
        name = host[: end + 1]
        if "[" in name[1:-1]:
            return None
    else:
        name, sep, port = host.partition(":")
        if sep and not _is_port(port):  # "::1" unbracketed, "host:abc": not an authority
            return None
        if name.endswith("."):
            name = name[:-1]
        if "[" in name or "]" in name:
            return None
    if not name or any(ch <= " " or ch in "\x7f/\\@?#" for ch in name):
        return None
    return name.lower()


def _is_port(text: str) -> bool:
    # RFC 3986 allows an empty port ("host:"); digits only, ASCII only ("²".isdigit() is True).
    return not text or (text.isascii() and text.isdigit())


def claims_for(settings: AssertionSettings, context: Mapping[str, str]) -> tuple[str, ...] | None:
    """The claims this route's assertion carries (always starting with ``sub``), or None: no assertion here."""
    chosen = context.get(CONTEXT_CLAIMS)
    if not chosen:
        return canonical_claims(",".join(settings.claims))
    return canonical_claims(chosen)


@functools.lru_cache(maxsize=256)
def canonical_claims(names: str) -> tuple[str, ...] | None:
    """``names`` (comma-separated) as a tuple in :data:`CLAIM_NAMES` order with ``sub``; None for ``none``.

    The order is fixed so that equal choices spelled differently share one memoized token in the issuer.
    """
    wanted = {name.strip().lower() for name in names.split(",")}
    if wanted == {NO_ASSERTION}:
        return None
    wanted.add(SUBJECT)
    return tuple(name for name in CLAIM_NAMES if name in wanted)


def ttl_problem(ttl: float) -> str | None:
    """Why ``ttl`` cannot be an assertion's lifetime (outside 1s..5m), or None."""
    if math.isfinite(ttl) and MIN_TTL <= ttl <= MAX_TTL:
        return None
    got = format_duration(ttl) if math.isfinite(ttl) and ttl >= 0 else repr(ttl)
    return f"must be between {format_duration(MIN_TTL)} and {format_duration(MAX_TTL)} (got {got})"


def check_ttl(ttl: float) -> None:
    if (problem := ttl_problem(ttl)) is not None:
        raise ValueError(f"assertion ttl {problem}")


def claim_problem(name: str) -> str | None:
    """Why ``name`` cannot be a configured claim, or None. (A route's ``assertion_claims`` ignores unknown names
    instead, see :func:`claims_for`: Envoy's config is not validated here.)"""
    if name in CLAIM_NAMES:
        return None
    return f"unknown claim {shown(name)} (choose from {', '.join(CLAIM_NAMES)})"


def claims_problem(claims: Sequence[str]) -> str | None:
    """Why the configured claim list cannot be used as a whole, or None (its names are checked one by one)."""
    if SUBJECT not in claims:
        return f"must include {SUBJECT} (an assertion without a subject identifies no one)"
    return None


def kid_problem(kid: str) -> str | None:
    """Why ``kid`` cannot name an assertion key (it is published in the JWKS and sent in every token), or None."""
    if _KID.fullmatch(kid) is None:
        return "invalid key id: 1-64 characters of A-Z a-z 0-9 _ . -"
    return None


def assertion_claims(
    record: SessionRecord,
    *,
    issuer: str,
    audience: str,
    now: float,
    ttl: float,
    claims: tuple[str, ...],
) -> dict[str, object]:
    """The JWT claims set for ``record``; ``iat`` is ``now`` rounded down and ``exp`` is ``iat + int(ttl)``.

    Raises ValueError for a ttl outside 1..300 s (an assertion is a bearer credential: a longer one is a
    replayable login), an empty issuer or audience, or a ``now`` that is not a time.
    """
    check_ttl(ttl)
    if not issuer:
        raise ValueError("an assertion needs an issuer")
    if not audience:
        raise ValueError("an assertion needs an audience (an aud-less token is valid at every upstream)")
    if not (math.isfinite(now) and now >= 0):
        raise ValueError(f"now must be a POSIX time, got {now!r}")
    iat = math.floor(now)
    payload: dict[str, object] = {
        "iss": issuer,
        "sub": record.user_id,
        "aud": audience,
        "iat": iat,
        "exp": iat + int(ttl),  # rounded down, so exp - iat never exceeds the configured ttl
    }
    if "email" in claims and record.email:
        payload["email"] = record.email
    if "roles" in claims:
        payload["roles"] = list(record.roles)
    if "sid" in claims:
        payload["sid"] = record.session_id
    return payload
