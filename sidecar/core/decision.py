"""From a request (and the session it resolved to, if any) to a decision: Allow or Deny.

Everything here is pure. The service in ``sidecar.authz`` does the I/O between ``inspect`` (what the request
carries) and ``decide`` (what to answer), and the protocol adapters translate the result.

Anti-spoofing: every Allow removes each client-sent header under the identity prefixes, whatever its case or
count, before the trusted values are set. A header is never listed both to set and to remove, because Envoy
applies removals after additions and would drop the trusted value.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from sidecar.core.cookies import cookie_values, parse_cookie_headers, without_cookie
from sidecar.core.policy import Route, RoutePolicy, missing_roles
from sidecar.core.request import RequestView, is_browser_navigation
from sidecar.core.session import SessionRecord
from sidecar.core.tokens import KeyRing, verify_token

MAX_TOKENS_TRIED = 3
COOKIE_HEADER = "cookie"
REALM = "session-sidecar"


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    cookie_name: str
    strip_upstream: bool
    user_id_header: str
    email_header: str
    roles_header: str
    session_header: str
    strip_prefixes: tuple[str, ...]
    login_url: str
    policy: RoutePolicy
    max_header_bytes: int = 8192  # headers.max_bytes: the most one allow may set upstream
    assertion_header: str = ""  # assertion.header when assertions are signed
    # The configured identity header names: every allow names those it does not set for removal, so they are
    # stripped even where the sidecar never saw them (Envoy's allowed_headers may leave them out).
    identity_names: tuple[str, ...] = field(init=False)
    # strip_prefixes and their underscore spellings (x_user_id): an upstream framework that maps "_" to "-" (CGI,
    # WSGI, PHP) would read x_user_id as X-User-Id, so a client-sent one is removed like the dashed one.
    spoof_prefixes: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = (self.user_id_header, self.email_header, self.roles_header, self.session_header, self.assertion_header)
        object.__setattr__(self, "identity_names", tuple(dict.fromkeys(name for name in names if name)))
        spellings = (form for prefix in self.strip_prefixes for form in (prefix, prefix.replace("-", "_")))
        object.__setattr__(self, "spoof_prefixes", tuple(dict.fromkeys(spellings)))


@dataclass(frozen=True, slots=True)
class Allow:
    headers_to_set: tuple[tuple[str, str], ...]
    headers_to_remove: tuple[str, ...]
    user_id: str | None = None
    session_id: str | None = None
    reason: str = "session"  # session | public (anonymous, on a public route) | stale (failure_policy: stale)

    @property
    def status(self) -> int:
        return 200


@dataclass(frozen=True, slots=True)
class Deny:
    status: int
    reason: str
    body: bytes
    headers: tuple[tuple[str, str], ...]


Decision = Allow | Deny


@dataclass(frozen=True, slots=True)
class Inspection:
    route: Route
    session_cookies: tuple[str, ...]  # values of the session cookie, in header order, unverified
    spoofable_headers: tuple[str, ...]  # client-sent header names under the identity prefixes
    cookie_header: str | None  # the Cookie value the upstream should get (None: remove the header)
    cookie_changed: bool


def inspect(settings: EdgeSettings, request: RequestView) -> Inspection:
    """Read what the request carries that matters: its route rule, session cookies and identity headers."""
    cookie_lines = request.values(COOKIE_HEADER)
    pairs = parse_cookie_headers(cookie_lines) if cookie_lines else []
    tokens = tuple(cookie_values(pairs, settings.cookie_name))
    cookie_header: str | None = None
    changed = False
    if tokens and settings.strip_upstream:
        cookie_header, changed = without_cookie(cookie_lines, settings.cookie_name)
    prefixes, policy = settings.spoof_prefixes, settings.policy
    spoofable = tuple(dict.fromkeys(name for name, _ in request.headers if name.startswith(prefixes)))
    return Inspection(
        route=policy.match(request.path)
        if not request.alternates
        else policy.match_all((request.path, *request.alternates)),
        session_cookies=tokens if not request.conflict else (),  # denied anyway: no store lookup
        spoofable_headers=spoofable,
        cookie_header=cookie_header,
        cookie_changed=changed,
    )


def tokens_to_try(ring: KeyRing, inspection: Inspection) -> tuple[str, ...]:
    """The first MAX_TOKENS_TRIED session cookies whose MAC verifies; forged ones never reach the store."""
    verified: list[str] = []
    for token in inspection.session_cookies:
        if verify_token(ring, token):
            verified.append(token)
            if len(verified) == MAX_TOKENS_TRIED:
                break
    return tuple(verified)


def identity_headers(settings: EdgeSettings, record: SessionRecord) -> list[tuple[str, str]]:
    headers = [(settings.user_id_header, record.user_id)]
    if record.email:
        headers.append((settings.email_header, record.email))
    if record.roles:
        headers.append((settings.roles_header, ",".join(record.roles)))
    headers.append((settings.session_header, record.session_id))
    return headers


def header_bytes(headers: Iterable[tuple[str, str]]) -> int:
    """The size of header lines as they go on the wire (``name: value\r\n``)."""
    return sum(len(name) + len(value.encode("utf-8", "surrogateescape")) + 4 for name, value in headers)


def allow(
    settings: EdgeSettings,
    inspection: Inspection,
    record: SessionRecord | None,
    extra: tuple[tuple[str, str], ...] = (),
) -> Decision:
    """Allow with the identity of ``record`` (and ``extra`` headers, e.g. the assertion), or deny with 403 when
    those would not fit in ``max_header_bytes``: an upstream answering 431 to every request of a session is worse
    than a clear denial naming the reason."""
    added = identity_headers(settings, record) if record is not None else []
    added.extend(extra)
    if record is not None and header_bytes(added) > settings.max_header_bytes:
        return identity_too_large()
    to_set: list[tuple[str, str]] = []
    to_remove: list[str] = []
    if inspection.cookie_changed:
        if inspection.cookie_header is None:
            to_remove.append(COOKIE_HEADER)
        else:
            # First: Envoy applies the set in order and checks its header-count limit as it goes; overwriting
            # many Cookie lines with one before adding the identity keeps a request near the limit under it.
            to_set.append((COOKIE_HEADER, inspection.cookie_header))
    to_set.extend(added)
    set_names = {name for name, _ in to_set}
    removed = dict.fromkeys((*inspection.spoofable_headers, *settings.identity_names))
    to_remove.extend(name for name in removed if name not in set_names)
    return Allow(
        headers_to_set=tuple(to_set),
        headers_to_remove=tuple(to_remove),
        user_id=record.user_id if record is not None else None,
        session_id=record.session_id if record is not None else None,
        reason="session" if record is not None else "public",
    )


@functools.lru_cache(maxsize=256)
def _json_deny(status: int, error: str, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> Deny:
    # Memoized: the common denials are the same object every time, so adapters can reuse their encoded form.
    body = json.dumps({"error": error, "reason": reason}, separators=(",", ":")).encode()
    headers = (("content-type", "application/json"), ("cache-control", "no-store"), *extra)
    return Deny(status=status, reason=reason, body=body, headers=headers)


def unauthenticated(settings: EdgeSettings, request: RequestView, reason: str) -> Deny:
    if settings.login_url and is_browser_navigation(request):
        return login_redirect(settings.login_url, request, reason)
    challenge = f'Cookie realm="{REALM}", cookie-name="{settings.cookie_name}"'
    return _json_deny(401, "unauthenticated", reason, (("www-authenticate", challenge),))


def original_url(request: RequestView) -> str:
    path = request.path if request.path.startswith("/") else "/" + request.path
    if not request.host:
        return path
    scheme = request.scheme or "http"
    return f"{scheme}://{request.host}{path}"


def login_redirect(login_url: str, request: RequestView, reason: str) -> Deny:
    separator = "&" if "?" in login_url else "?"
    # surrogateescape: a path with non-UTF-8 bytes is percent-encoded byte for byte (it used to raise, a 503).
    location = f"{login_url}{separator}rd={quote(original_url(request), safe='', errors='surrogateescape')}"
    return Deny(
        status=302,
        reason=reason,
        body=b"",
        headers=(("location", location), ("cache-control", "no-store")),
    )


def forbidden(missing: tuple[str, ...]) -> Deny:
    return _json_deny(403, "forbidden", "missing_roles:" + ",".join(missing))


def identity_too_large() -> Deny:
    return _json_deny(403, "forbidden", "identity_too_large")


def forwarded_conflict() -> Deny:
    """Forward-auth: the headers naming the original request's method, host or scheme disagree, so a client wrote
    one of them. 403, not 400: nginx's auth_request passes only 401 and 403 on (anything else becomes a 500)."""
    return _json_deny(403, "forbidden", "forwarded_conflict")


def unavailable() -> Deny:
    return _json_deny(503, "unavailable", "session_store_unavailable", (("retry-after", "1"),))


def decide(
    settings: EdgeSettings,
    request: RequestView,
    inspection: Inspection,
    record: SessionRecord | None,
    *,
    store_failed: bool = False,
    invalid_reason: str = "session_required",
    extra: tuple[tuple[str, str], ...] = (),
) -> Decision:
    """The answer for a request once its session (or the lack of one) is known.

    ``record`` is a live session already; ``store_failed`` says the store could not tell, which denies with 503
    everywhere but on public routes (they stay up, anonymously, when the store is down). ``extra``: headers to set
    with the identity (the signed assertion).
    """
    if request.conflict:
        return forwarded_conflict()
    route = inspection.route
    if record is not None:
        missing = missing_roles(route, record.roles)
        if missing:
            return forbidden(missing)
        return allow(settings, inspection, record, extra)
    if route.public:
        return allow(settings, inspection, None)
    if store_failed:
        return unavailable()
    return unauthenticated(settings, request, invalid_reason)
