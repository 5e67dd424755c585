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
from sidecar.core.memo import keep
from sidecar.core.policy import Route, RoutePolicy, missing_roles
from sidecar.core.reasons import RULES, Reason
from sidecar.core.request import RequestView, is_browser_navigation
from sidecar.core.session import SessionRecord

COOKIE_HEADER = "cookie"
REALM = "session-sidecar"


MAX_MEMOIZED_ALLOWS = 4096
MAX_MEMOIZED_ALLOW_INPUT = 1024  # bytes of cookie rewrite and spoofed header names in a memoized allow's key


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    cookie_name: str  # named in the 401 challenge; the first source's cookie
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
    # Every session source's cookie names, in source order (default: cookie_name alone): their values are the
    # request's session cookies, and strip_upstream removes them all.
    cookie_names: tuple[str, ...] = ()
    # The configured identity header names: every allow names those it does not set for removal, so they are
    # stripped even where the sidecar never saw them (Envoy's allowed_headers may leave them out).
    identity_names: tuple[str, ...] = field(init=False)
    # strip_prefixes and their underscore spellings (x_user_id): an upstream framework that maps "_" to "-" (CGI,
    # WSGI, PHP) would read x_user_id as X-User-Id, so a client-sent one is removed like the dashed one.
    spoof_prefixes: tuple[str, ...] = field(init=False)
    # The allows of the sessions seen last (see ``allow``): bounded, full it starts over.
    allows: dict[tuple[object, ...], Decision] = field(
        default_factory=dict, init=False, compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        names = (self.user_id_header, self.email_header, self.roles_header, self.session_header, self.assertion_header)
        object.__setattr__(self, "identity_names", tuple(dict.fromkeys(name for name in names if name)))
        spellings = (form for prefix in self.strip_prefixes for form in (prefix, prefix.replace("-", "_")))
        object.__setattr__(self, "spoof_prefixes", tuple(dict.fromkeys(spellings)))
        object.__setattr__(self, "cookie_names", tuple(dict.fromkeys(self.cookie_names or (self.cookie_name,))))


@dataclass(frozen=True, slots=True)
class Allow:
    headers_to_set: tuple[tuple[str, str], ...]
    headers_to_remove: tuple[str, ...]
    user_id: str | None = None
    session_id: str | None = None
    reason: str = RULES[Reason.SESSION].text  # the text of Reason.SESSION, PUBLIC or STALE

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
class Found:
    """What the session lookup found: a live session (``SESSION``; ``STALE`` when it is the last known identity
    of a session the store could not confirm), or why there is none (``NO_SESSION``, ``FORGED``, ``UNKNOWN``,
    ``RECORD_CORRUPT``, ``RECORD_TOO_LARGE``, ``STORE_UNAVAILABLE``)."""

    reason: Reason
    record: SessionRecord | None = None
    source: str = ""  # the kind of the session source the record came from (native, express, ...)

    def __post_init__(self) -> None:
        if (self.record is not None) != (self.reason in _WITH_RECORD):
            raise ValueError(f"{self.reason.name} {'needs' if self.record is None else 'takes no'} session record")

    @classmethod
    def session(cls, record: SessionRecord) -> Found:
        return cls(Reason.SESSION, record)


_WITH_RECORD = frozenset((Reason.SESSION, Reason.STALE))
NO_SESSION = Found(Reason.NO_SESSION)


@dataclass(frozen=True, slots=True)
class Inspection:
    route: Route
    session_cookies: tuple[str, ...]  # values of every session source's cookie, in header order, unverified
    spoofable_headers: tuple[str, ...]  # client-sent header names under the identity prefixes
    cookie_header: str | None  # the Cookie value the upstream should get (None: remove the header)
    cookie_changed: bool
    # The name of each of session_cookies, when several cookie names are read (with one, every value is its).
    session_cookie_names: tuple[str, ...] = ()

    def values(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The values of the session cookies named ``names`` (one source's), in header order."""
        if not self.session_cookie_names:
            return self.session_cookies
        pairs = zip(self.session_cookie_names, self.session_cookies, strict=True)
        return tuple(value for name, value in pairs if name in names)


def inspect(settings: EdgeSettings, request: RequestView) -> Inspection:
    """Read what the request carries that matters: its route rule, session cookies and identity headers."""
    cookie_lines = request.values(COOKIE_HEADER)
    pairs = parse_cookie_headers(cookie_lines) if cookie_lines else []
    names = settings.cookie_names
    named: tuple[tuple[str, str], ...] = ()
    if len(names) == 1:  # the norm: one source
        tokens = tuple(cookie_values(pairs, names[0]))
    else:
        named = tuple((name, value) for name, value in pairs if name in names)
        tokens = tuple(value for _, value in named)
    cookie_header: str | None = None
    changed = False
    if tokens and settings.strip_upstream:
        cookie_header, changed = without_cookie(cookie_lines, names[0])
        for name in names[1:]:
            if cookie_header is not None:
                cookie_header, removed = without_cookie((cookie_header,), name)
                changed = changed or removed
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
        session_cookie_names=tuple(name for name, _ in named) if named and not request.conflict else (),
    )


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
    reason: Reason | None = None,
) -> Decision:
    """Allow with the identity of ``record`` (and ``extra`` headers, e.g. the assertion) for ``reason`` (default
    SESSION with a record, PUBLIC without), or deny with 403 when
    those would not fit in ``max_header_bytes``: an upstream answering 431 to every request of a session is worse
    than a clear denial naming the reason."""
    key: tuple[object, ...] | None = None
    if record is not None and _memoizable(inspection):
        # The answer depends on these alone, and a logged-in user's requests repeat them: built once, then
        # looked up (issue #14). ``extra`` (the assertion) is in the key, so a renewed token builds a new one.
        key = (record.user_id, record.email, record.roles, record.session_id, inspection.cookie_changed,
               inspection.cookie_header, inspection.spoofable_headers, extra, reason)  # fmt: skip
        known = settings.allows.get(key)
        if known is not None:
            return known
    decision = _allow(settings, inspection, record, extra, reason)
    return decision if key is None else keep(settings.allows, key, decision, MAX_MEMOIZED_ALLOWS)


def _memoizable(inspection: Inspection) -> bool:
    """An allow worth keeping: what the client chose of its key (the Cookie rewrite, the spoofed header names) is
    small, so a client sending large or ever-new ones costs this memo a bounded amount each (issue #14)."""
    chosen = len(inspection.cookie_header or "") + sum(len(name) + 1 for name in inspection.spoofable_headers)
    return chosen <= MAX_MEMOIZED_ALLOW_INPUT


def _allow(
    settings: EdgeSettings,
    inspection: Inspection,
    record: SessionRecord | None,
    extra: tuple[tuple[str, str], ...],
    reason: Reason | None,
) -> Decision:
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
        reason=RULES[reason or (Reason.SESSION if record is not None else Reason.PUBLIC)].text,
    )


@functools.lru_cache(maxsize=256)
def _json_deny(status: int, error: str, reason: str, extra: tuple[tuple[str, str], ...] = ()) -> Deny:
    # Memoized: the common denials are the same object every time, so adapters can reuse their encoded form.
    body = json.dumps({"error": error, "reason": reason}, separators=(",", ":")).encode()
    headers = (("content-type", "application/json"), ("cache-control", "no-store"), *extra)
    return Deny(status=status, reason=reason, body=body, headers=headers)


def denial(reason: Reason, detail: str = "") -> Deny:
    """The JSON denial of ``reason``'s row (``detail`` follows its text after ":"); a 401 goes through
    ``unauthenticated`` instead, which needs the request."""
    rule = RULES[reason]
    return _json_deny(rule.status, rule.error, f"{rule.text}:{detail}" if detail else rule.text, rule.headers)


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
    return denial(Reason.MISSING_ROLES, ",".join(missing))


def identity_too_large() -> Deny:
    return denial(Reason.IDENTITY_TOO_LARGE)


def forwarded_conflict() -> Deny:
    """Forward-auth: the headers naming the original request's method, host or scheme disagree, so a client wrote
    one of them."""
    return denial(Reason.FORWARDED_CONFLICT)


def unavailable() -> Deny:
    return denial(Reason.STORE_UNAVAILABLE)


def decide(
    settings: EdgeSettings,
    request: RequestView,
    inspection: Inspection,
    found: Found | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> Decision:
    """The answer for a request once the session lookup has ``found`` what it found (None: nothing was looked
    up, as NO_SESSION).

    A session (live, or its last known identity) is allowed when it holds the route's roles; without one, a
    public route is allowed anonymously whatever the lookup found (public routes stay up, anonymously, when the
    store is down), and any other route is denied for the lookup's reason. ``extra``: headers to set with the
    identity (the signed assertion).
    """
    if request.conflict:
        return forwarded_conflict()
    route = inspection.route
    found = found or NO_SESSION
    record = found.record
    if record is not None:
        missing = missing_roles(route, record.roles)
        if missing:
            return forbidden(missing)
        return allow(settings, inspection, record, extra, found.reason)
    if route.public:
        return allow(settings, inspection, None)
    rule = RULES[found.reason]
    if rule.status == 401:
        return unauthenticated(settings, request, rule.text)
    return denial(found.reason)
