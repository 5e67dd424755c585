"""The fuzzed decision path: a real AuthzService over the in-memory store, the requests fed to it, and the oracle.

Shared by the CI-sized tests next to it and by ``bench/fuzz.py`` (the long runner), so both check the same
properties. The oracle finds session cookies with a regular expression over the raw Cookie lines, not with
``sidecar.core.cookies``, so a parser bug cannot hide by agreeing with itself; it knows which tokens are valid
and live because it minted them, not by asking ``verify_token``.

Properties of every request (``Harness.check`` returns each one broken, as text, in its ``Verdict``):

* ``check()`` returns an Allow or a Deny and never fails internally (its own catch-all answers 503 and logs an
  error: both count as a crash here, since the in-memory store never fails);
* an Allow on a protected route only when a cookie named exactly ``SESSION`` holds exactly a live token (among
  the first 3 with a valid MAC, in header order), with that session's identity and nothing the client sent;
* every client-sent header under ``x-user-`` / ``x-session-`` is removed or overwritten, and the session cookie
  never reaches the upstream;
* a token without a valid MAC never reaches the store, and at most 3 are looked up;
* the cached service (the no-I/O fast path) decides exactly as the uncached one;
* the gRPC and HTTP adapters read the request back unchanged and encode the decision without raising or
  splitting the response.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import re
import string
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from hypothesis import strategies as st

from sidecar.authz import forwarded, grpc_v3, http
from sidecar.authz.service import AuthzService
from sidecar.core.decision import Allow, Decision, Deny, inspect
from sidecar.core.request import RequestView
from sidecar.core.session import SessionRecord, new_session
from sidecar.core.tokens import KeyRing, SessionKey, mint_token, session_key, user_tag
from sidecar.keyring import KeyRingSource
from sidecar.sources.cached import CachedSource
from sidecar.sources.native import NativeSource
from sidecar.store.cache import SessionCache
from sidecar.store.memory import MemoryStore
from tests.support.edge import RING, SETTINGS

T = TypeVar("T")

NOW = 1_800_000_000.0
COOKIE = SETTINGS.cookie_name
PREFIXES = ("x-user-", "x-session-")  # CONTRACT.md's strip_prefixes, written out rather than read from SETTINGS
MAX_TRIED = 3  # CONTRACT.md: "at most 3 are tried"


# --------------------------------------------------------------------------------------------------- tokens


# Deterministic entropy, so a failing example replays with the very same tokens.
def _entropy(label: str) -> bytes:
    return hashlib.sha256(f"fuzz:{label}".encode()).digest()


def _record(
    user: str, email: str | None, roles: tuple[str, ...], *, now: float = NOW, idle: float = 3600.0
) -> SessionRecord:
    return new_session(
        session_id=f"sid-{user}", user_id=user, email=email, roles=roles, attributes={},
        idle_timeout=idle, absolute_timeout=7200.0, now=now,
    )  # fmt: skip


def _mint(ring: KeyRing, user: str, label: str = "") -> str:
    return mint_token(ring, _entropy(label or user), user_tag(user))


LIVE: dict[str, SessionRecord] = {
    _mint(RING, user): _record(user, email, roles)
    for user, email, roles in [
        ("alice", "alice@example.com", ("admin", "dev")),
        ("bob", "bob@example.com", ("dev",)),
        ("carol", None, ()),
    ]
}
REVOKED = _mint(RING, "dave")
EXPIRED = _mint(RING, "erin")
UNKNOWN = _mint(RING, "frank")  # signed with the right key, never stored
SIGNED = frozenset({*LIVE, REVOKED, EXPIRED, UNKNOWN})  # every token whose MAC verifies under RING
# Well-formed tokens from other key rings: an unknown kid, and the right kid with another secret.
FOREIGN = tuple(
    _mint(ring, user)
    for ring in (KeyRing.of([("k2", b"o" * 32)]), KeyRing.of([("k1", b"t" * 32)]))
    for user in ("alice", "bob")
)
VALID = tuple(sorted(SIGNED))


def identity_of(record: SessionRecord) -> dict[str, str]:
    """The identity headers CONTRACT.md promises for a session (written out, not taken from the product)."""
    headers = {"x-user-id": record.user_id}
    if record.email:
        headers["x-user-email"] = record.email
    if record.roles:
        headers["x-user-roles"] = ",".join(record.roles)
    headers["x-session-id"] = record.session_id
    return headers


# --------------------------------------------------------------------------------------------------- oracle

# One Cookie piece named exactly COOKIE: after a ";" or the start of the line, optional SP/HTAB, the name,
# optional SP/HTAB, "=", optional SP/HTAB, then everything up to the next ";" (trailing SP/HTAB trimmed below).
# Greedy classes only, so the scan stays linear whatever the input.
_SESSION_PIECE = re.compile(r"(?:\A|;)[ \t]*" + re.escape(COOKIE) + r"[ \t]*=[ \t]*([^;]*)")


def session_values(lines: Iterable[str]) -> list[str]:
    """The values of every cookie named exactly COOKIE in these Cookie lines, in header order."""
    return [m.group(1).rstrip(" \t") for line in lines for m in _SESSION_PIECE.finditer(line)]


class RouteKind(enum.Enum):
    PROTECTED = "protected"  # the default route: any live session
    ADMIN = "admin"  # needs the admin role
    PUBLIC = "public"
    UNKNOWN = "unknown"  # a fuzzed path the oracle does not try to route; only the weaker properties apply


KNOWN_PATHS: dict[str, RouteKind] = {
    "/app": RouteKind.PROTECTED,
    "/": RouteKind.PROTECTED,
    "/hello?q=1": RouteKind.PROTECTED,
    "/publicity": RouteKind.PROTECTED,
    "/public/%ff": RouteKind.PROTECTED,  # undecodable escapes are never public
    "/PUBLIC/x": RouteKind.PROTECTED,
    "/admin": RouteKind.ADMIN,
    "/admin/panel": RouteKind.ADMIN,
    "/public/../admin": RouteKind.ADMIN,
    "/%61dmin/x": RouteKind.ADMIN,
    "/public%2F..%2Fadmin": RouteKind.ADMIN,
    "//admin": RouteKind.ADMIN,
    "/admin;x=1": RouteKind.ADMIN,
    "/./admin": RouteKind.ADMIN,
    "/public": RouteKind.PUBLIC,
    "/public/page": RouteKind.PUBLIC,
    "/public?x=1": RouteKind.PUBLIC,
}


def route_of(path: str) -> RouteKind:
    if path in KNOWN_PATHS:
        return KNOWN_PATHS[path]
    # Without these, no reading of the path can reach the /public or /admin rules: it is the default route.
    if not any(marker in path for marker in ("%", "\\", ";", "public", "admin")):
        return RouteKind.PROTECTED
    return RouteKind.UNKNOWN


def _as_decoded(value: str) -> str:
    """``value`` as an adapter decodes its bytes (UTF-8, non-UTF-8 bytes escaped); as is when it has no bytes."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value


@dataclass(frozen=True)
class Case:
    """One request as the client sent it: header names in any case, values as the adapters decode them."""

    path: str
    headers: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        # Pieces drawn apart and joined can make escaped bytes that are valid UTF-8 together ("\udcc2" + "\udc80"
        # is b"\xc2\x80"): an adapter reading those bytes sees "\x80", so the case holds what it would see.
        object.__setattr__(self, "headers", tuple((name, _as_decoded(value)) for name, value in self.headers))

    def view(self) -> RequestView:
        # The adapters lower-case header names; everything else reaches the core as sent.
        lowered = tuple((name.lower(), value) for name, value in self.headers)
        return RequestView(method="GET", scheme="https", host="example.com", path=self.path, headers=lowered)

    def cookie_lines(self) -> list[str]:
        return [value for name, value in self.headers if name.lower() == "cookie"]

    def short(self, limit: int = 300) -> str:
        text = repr(self)
        return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def expected_session(case: Case) -> SessionRecord | None:
    """The live session the request should resolve to: the first live one among the first 3 valid-MAC tokens."""
    verified = [value for value in session_values(case.cookie_lines()) if value in SIGNED][:MAX_TRIED]
    return next((LIVE[token] for token in verified if token in LIVE), None)


def _summary(decision: Decision) -> tuple[object, ...]:
    if isinstance(decision, Allow):
        return ("allow", decision.headers_to_set, decision.headers_to_remove, decision.user_id, decision.session_id)
    return ("deny", decision.status, decision.reason)


def judge(case: Case, decision: object) -> list[str]:
    """Every property of the decision path that ``decision`` breaks for ``case``."""
    if not isinstance(decision, Allow | Deny):
        return [f"check() returned {decision!r}, neither Allow nor Deny"]
    record = expected_session(case)
    kind = route_of(case.path)
    problems: list[str] = []
    if isinstance(decision, Deny):
        if decision.status == 503:
            problems.append("503: check() failed internally (the in-memory store never fails)")
        elif decision.status == 403 and record is None:
            problems.append("403 without a live session")
        elif decision.status not in (401, 403):
            problems.append(f"unexpected denial status {decision.status}")
    if kind is RouteKind.PROTECTED:
        want: object = Allow if record is not None else 401
    elif kind is RouteKind.ADMIN:
        want = 401 if record is None else Allow if "admin" in record.roles else 403
    elif kind is RouteKind.PUBLIC:
        want = Allow
    else:
        want = None
    got: object = Allow if isinstance(decision, Allow) else decision.status
    if want is not None and got != want:
        problems.append(f"{kind.value} route, expected session {record and record.user_id}: wanted {want}, got {got}")
    if want is None and isinstance(decision, Allow) and record is None and not SETTINGS.policy.match(case.path).public:
        problems.append("allowed without a live session on a route that is not public")
    if isinstance(decision, Allow):
        problems += _judge_allow(case, decision, record)
    return problems


def _judge_allow(case: Case, allow: Allow, record: SessionRecord | None) -> list[str]:
    problems: list[str] = []
    to_set: dict[str, str] = {}
    for name, value in allow.headers_to_set:
        if name in to_set:
            problems.append(f"{name!r} set twice")
        to_set[name] = value
    identity = {name: value for name, value in to_set.items() if name.startswith(PREFIXES)}
    wanted = identity_of(record) if record is not None else {}
    if identity != wanted:
        problems.append(f"identity headers {identity!r} are not the session's {wanted!r}")
    if (allow.user_id, allow.session_id) != ((record.user_id, record.session_id) if record else (None, None)):
        problems.append(f"Allow names user {allow.user_id!r} / session {allow.session_id!r}")
    removed = set(allow.headers_to_remove)
    if removed & set(to_set):
        problems.append(f"{sorted(removed & set(to_set))} both set and removed (Envoy would drop the trusted value)")
    for name, _ in case.headers:
        low = name.lower()
        if low.startswith(PREFIXES) and low not in removed and low not in to_set:
            problems.append(f"client-sent {name!r} reaches the upstream")
    if "cookie" in to_set:
        upstream = [to_set["cookie"]]
    elif "cookie" in removed:
        upstream = []
    else:
        upstream = case.cookie_lines()
    if session_values(upstream):
        problems.append("the session cookie reaches the upstream")
    return problems


# --------------------------------------------------------------------------------------------------- adapters


def _encodable(text: str, errors: str = "strict") -> bool:
    try:
        text.encode("utf-8", errors)
    except UnicodeEncodeError:
        return False
    return True


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _grpc_expected(decision: Allow) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """What the gRPC answer must carry: the Allow's headers, except that Envoy ignores raw_value, so a rewritten
    Cookie keeps only its UTF-8 pieces (and is removed when none is left)."""
    to_set, to_remove = list(decision.headers_to_set), list(decision.headers_to_remove)
    for i, (name, value) in enumerate(to_set):
        if name == "cookie" and not _utf8(value):
            kept = "; ".join(p.strip(" \t") for p in value.split(";") if p.strip(" \t") and _utf8(p))
            if kept:
                to_set[i] = (name, kept)
            else:
                del to_set[i]
                to_remove.append("cookie")
            break
    return tuple(to_set), tuple(to_remove)


def judge_grpc(case: Case, decision: Decision) -> list[str]:
    """The gRPC adapter reads the CheckRequest back as the same request and encodes the decision faithfully."""
    # Envoy sends header names and the path as text and values as raw bytes (encode_raw_headers).
    if not _encodable(case.path) or not all(
        _encodable(n) and _encodable(v, "surrogateescape") for n, v in case.headers
    ):
        return []
    request = external_auth_pb2.CheckRequest()
    attrs = request.attributes.request.http
    attrs.method, attrs.scheme, attrs.host, attrs.path = "GET", "https", "example.com", case.path
    for name, value in case.headers:
        attrs.header_map.headers.append(
            base_pb2.HeaderValue(key=name, raw_value=value.encode("utf-8", "surrogateescape"))
        )
    problems: list[str] = []
    read, sent = grpc_v3.to_request_view(request), case.view()
    if (read.method, read.path, read.headers) != (sent.method, sent.path, sent.headers):
        problems.append("the gRPC adapter does not read the request back unchanged")
    response = grpc_v3.to_check_response(decision)
    response.SerializeToString()
    if isinstance(decision, Allow):
        ok = response.ok_response
        sent = [
            (
                o.header.key,
                o.header.raw_value.decode("utf-8", "surrogateescape") if o.header.raw_value else o.header.value,
            )
            for o in ok.headers
        ]
        expected_set, expected_remove = _grpc_expected(decision)
        if tuple(sent) != expected_set or tuple(ok.headers_to_remove) != expected_remove:
            problems.append("the gRPC answer does not carry the Allow's headers")
        if response.HasField("denied_response"):
            problems.append("an Allow encoded with a denied_response")
    elif response.denied_response.status.code != decision.status or response.HasField("ok_response"):
        problems.append("the gRPC answer does not carry the denial's status")
    return problems


def judge_http(case: Case, decision: Decision) -> list[str]:
    """The HTTP adapter passes headers through and never emits a split or garbled response."""
    headers = case.view().headers
    view = forwarded.to_request_view("GET", case.path, headers)
    problems: list[str] = []
    if view.headers != headers:
        problems.append("the HTTP adapter changed the headers")
    raw = http.encode(decision)
    head, sep, _ = raw.partition(b"\r\n\r\n")
    if not sep:
        return [*problems, "the HTTP answer has no end of head"]
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    status = int(lines[0].split(" ")[1])
    if isinstance(decision, Deny):
        if status != decision.status:
            problems.append(f"the HTTP answer to a {decision.status} denial is {status}")
        return problems
    unsafe = any(ch in value for _, value in decision.headers_to_set for ch in "\r\n\0")
    if unsafe:
        if status != 503:
            problems.append("an Allow carrying CR/LF/NUL was sent instead of refused")
        return problems
    metadata = [f"x-authz-reason: {decision.reason}"]
    if decision.user_id is not None:
        metadata += [f"x-authz-user-id: {decision.user_id}", f"x-authz-session-id: {decision.session_id}"]
    expected = ["content-length: 0", *metadata, *(f"{n}: {v}" for n, v in decision.headers_to_set)]
    if decision.headers_to_remove:
        expected.append(f"{http.HEADERS_TO_REMOVE}: {','.join(decision.headers_to_remove)}")
    if status != 200 or lines[1:] != expected:
        problems.append(f"the HTTP allow is not the decision's headers: {lines[:6]!r}")
    return problems


# --------------------------------------------------------------------------------------------------- harness


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.name}: {record.getMessage()}")


class RecordingStore(MemoryStore):
    """Remembers every session key looked up, so the fuzz can check what reaches the store."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.resolved: list[SessionKey] = []

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        self.resolved.append(key)
        return await super().resolve(key, now)


SIGNED_KEYS = frozenset(session_key(token) for token in SIGNED)


class Harness:
    """A real AuthzService (and a cached one) over the in-memory store holding the sessions above."""

    def __init__(self) -> None:
        self.now = NOW
        self.loop = asyncio.new_event_loop()
        self.store = store = RecordingStore(self.clock)
        self.service = AuthzService(SETTINGS, store, KeyRingSource(store, RING), deadline=5.0, clock=self.clock)
        cache = SessionCache(ttl=86_400, max_entries=1000, max_bytes=10**7)
        native = NativeSource(store, KeyRingSource(store, RING), SETTINGS.cookie_name)
        source = CachedSource(native, cache=cache, clock=self.clock)
        source.set_live(True)  # as if the invalidation channel were up: the fast path answers from the cache
        self.cached = AuthzService(SETTINGS, sources=[source], deadline=5.0, clock=self.clock)
        self.run(self._populate(store))
        store.resolved.clear()
        self._errors = _Errors()
        logging.getLogger("sidecar").addHandler(self._errors)

    def clock(self) -> float:
        return self.now

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _populate(self, store: MemoryStore) -> None:
        for token, record in LIVE.items():
            await store.create(session_key(token), record)
        await store.create(session_key(REVOKED), _record("dave", None, ()))
        await store.revoke(session_key(REVOKED))
        # Idle for 90 s past its 10 s idle timeout: still in the store's dict, dropped when read.
        await store.create(session_key(EXPIRED), _record("erin", None, (), now=NOW - 100, idle=10.0))

    def close(self) -> None:
        logging.getLogger("sidecar").removeHandler(self._errors)
        self.loop.close()

    def decide(self, case: Case) -> tuple[Decision, list[str]]:
        """The decision of the uncached service and the problems of both services with ``case``.

        An exception escaping here is a crash of the decision path; callers let it fail the test (or count it).
        """
        view = case.view()
        inspect(SETTINGS, view)  # pure: a core bug raises here with its own traceback, not as a logged 503
        self._errors.seen.clear()
        self.store.resolved.clear()
        decision = self.run(self.service.check(view))
        problems = self._lookups()
        fast = self.run(self.cached.check(view))
        problems += self._lookups()
        problems += [f"logged {message}" for message in self._errors.seen]
        problems += judge(case, decision)
        if _summary(fast) != _summary(decision):
            problems.append(f"the cached path decided {_summary(fast)!r}, the store path {_summary(decision)!r}")
        return decision, problems

    def _lookups(self) -> list[str]:
        """CONTRACT.md: a malformed or forged token never reaches the store, and at most 3 tokens are tried."""
        keys, self.store.resolved = self.store.resolved, []
        problems = [f"{len(keys)} store lookups for one request"] if len(keys) > MAX_TRIED else []
        if any(key not in SIGNED_KEYS for key in keys):
            problems.append("a token without a valid MAC reached the store")
        return problems

    def check(self, case: Case, *, adapters: bool = True) -> Verdict:
        decision, problems = self.decide(case)
        if adapters:
            problems += judge_grpc(case, decision) + judge_http(case, decision)
        return Verdict(decision, problems)


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    problems: list[str]

    @property
    def label(self) -> str:
        """What kind of answer it was, for Hypothesis's statistics (are allows reached at all?)."""
        if isinstance(self.decision, Allow):
            return f"allow {self.decision.user_id or 'anonymous'}"
        return f"deny {self.decision.status}"


# --------------------------------------------------------------------------------------------------- strategies

# Characters that broke other parsers or could fool a lenient one: separators, quotes, escapes, every kind of
# space (only SP and HTAB may be trimmed), controls, obs-text, and the letters of the cookie name.
NASTY = ' \t;=",\\\u3000\xa0\x0b\x0c\r\n\x00\x7f\x80\xff\udcff' + "SESIONs1k.-_"
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"

raw_text = st.one_of(
    st.text(max_size=60),  # any Unicode but lone surrogates
    st.text(alphabet=NASTY, max_size=60),
    # Non-UTF-8 bytes as both adapters decode them (surrogateescape), e.g. "\xff" -> "\udcff".
    st.binary(max_size=60).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)

_KIDS = ["k2", "K1", "k1k1", "", "k", "k1 ", "x" * 17, "k\u0131", "k1\x00", "shared"]


def _flip(token: str, index: int, bit: int) -> str:
    index %= len(token)
    return token[:index] + chr(ord(token[index]) ^ (1 << bit)) + token[index + 1 :]


def _swap_case(token: str, index: int) -> str:
    index %= len(token)
    return token[:index] + token[index].swapcase() + token[index + 1 :]


def _with_kid(token: str, kid: str) -> str:
    parts = token.split(".")
    return ".".join([parts[0], kid, *parts[2:]])


def _permuted(token: str, order: Sequence[int]) -> str:
    parts = token.split(".")
    return ".".join(parts[i] for i in order)


_valid = st.sampled_from(VALID)
_index = st.integers(0, 200)

mutated_token = st.one_of(
    st.builds(_flip, _valid, _index, st.integers(0, 20)),
    st.builds(lambda t, i: t[: i % len(t)], _valid, _index),  # truncated at the end
    st.builds(lambda t, i: t[1 + i % len(t) :], _valid, _index),  # truncated at the start
    st.builds(_swap_case, _valid, _index),
    _valid.map(str.upper),
    _valid.map(str.lower),
    st.builds(lambda t, i, extra: t[: i % len(t)] + extra + t[i % len(t) :], _valid, _index, raw_text),
    st.builds(lambda t, extra: t + extra, _valid, st.text(alphabet=NASTY + "Aa0=.", min_size=1, max_size=3)),
    st.builds(_with_kid, _valid, st.sampled_from(_KIDS)),
    st.builds(_permuted, _valid, st.permutations(range(5))),
    st.sampled_from(FOREIGN),
    _valid.map(lambda t: f'"{t}"'),
    _valid.map(lambda t: t + t),
    st.builds(lambda a, b: a[: len(a) // 2] + b[len(b) // 2 :], _valid, _valid),  # two tokens spliced
    st.builds(lambda t, pad: pad + t + pad, _valid, st.sampled_from([" ", "\t", " \t ", "\xa0", "\u3000", "\x0b"])),
    st.builds(lambda t, i: t.replace(".", "%2E", 1 + i % 4), _valid, _index),
    _valid.map(lambda t: t.replace("1", "\uff11", 1)),  # a full-width digit in the version
)

# Valid tokens are drawn often: an Allow is where the spoofing and cookie-stripping properties have teeth.
token_value = st.one_of(_valid, _valid, _valid, st.sampled_from(FOREIGN), mutated_token, raw_text)

cookie_name = st.one_of(
    st.sampled_from(
        [COOKIE] * 4
        + ["session", "Session", f"{COOKIE} ", f" {COOKIE}", f"\t{COOKIE}", f"\u3000{COOKIE}", f"\xa0{COOKIE}"]
        + [f"{COOKIE}\x00", f"{COOKIE}S", COOKIE[:-1], f"__Host-{COOKIE}", "", "a", f'"{COOKIE}"', f"{COOKIE}\r"]
    ),
    raw_text,
)

_eq = st.sampled_from(["=", "=", "=", " = ", "\t=", "=\t", "==", "", ":"])
piece = st.one_of(
    st.builds(lambda value: f"{COOKIE}={value}", token_value),
    st.builds(lambda name, eq, value: f"{name}{eq}{value}", cookie_name, _eq, token_value),
    raw_text,
)
_sep = st.sampled_from(["; ", "; ", ";", " ; ", ";\t", " ;; ", ";;", ",", ", ", " ", "\r\n", "\n", "\x00"])


def _join(items: list[tuple[str, str]]) -> str:
    return "".join(p + s for p, s in items)


cookie_line = st.builds(_join, st.lists(st.tuples(piece, _sep), max_size=8))

# Large inputs are built by repetition: a drawn 60 KiB string would be slow to generate and over Hypothesis's
# own size limits, while a repeated unit is just as hard for a parser.
_UNITS = [";", "=", "\\", '"', " ", "\t", " \t", "; ", "=;", " =", "a", f"{COOKIE}=", f"{COOKIE}=;", '\\"', "\udcff"]
huge_line = st.builds(
    lambda unit, n, tail: unit * n + tail,
    st.sampled_from(_UNITS),
    st.integers(0, 40_000),
    st.one_of(st.just(""), st.builds(lambda v: f"; {COOKIE}={v}", token_value)),
)


def _many(n: int, filler: str, at: int, session: str) -> str:
    pieces = [filler] * n
    pieces.insert(at % (n + 1), session)
    return "; ".join(pieces)


many_pairs_line = st.builds(
    _many,
    st.integers(0, 5000),
    piece,
    st.integers(0, 10_000),
    st.builds(lambda name, value: f"{name}={value}", cookie_name, token_value),
)

_cookie_header_name = st.sampled_from(["cookie", "Cookie", "COOKIE", "cOoKiE"])
_SPOOF_NAMES = [
    "x-user-id", "X-User-Id", "X-USER-ID", "x-uSeR-iD", "x-user-email", "X-User-Email", "x-user-roles",
    "X-USER-ROLES", "x-user-", "x-user-anything", "x-session-id", "X-Session-Id", "x-SESSION-other",
    "x-userid", "xx-user-id", "x_user_id",
]  # fmt: skip
_SPOOF_VALUES = ["admin", "root", "alice", "bob", "carol", "admin,superuser", "sid-alice", "sid-bob", ""]
_OTHER_NAMES = ["accept", "sec-fetch-mode", "host", "authorization", "x-forwarded-uri", "x-forwarded-proto"]

spoofed_header = st.tuples(st.sampled_from(_SPOOF_NAMES), st.one_of(st.sampled_from(_SPOOF_VALUES), raw_text))
other_header = st.tuples(
    st.one_of(st.sampled_from(_OTHER_NAMES), st.text(alphabet=TCHAR, min_size=1, max_size=20)), raw_text
)
path = st.one_of(
    st.sampled_from(sorted(KNOWN_PATHS)),
    st.sampled_from(sorted(KNOWN_PATHS)),
    st.builds(lambda p: "/" + p, st.text(alphabet=string.ascii_lowercase + "/.%;?#\\", max_size=30)),
    st.builds(lambda p: "/" + p, raw_text),
    raw_text,
)


def cookie_header(line: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    return st.tuples(_cookie_header_name, line)


def requests(lines: st.SearchStrategy[str] = cookie_line, max_headers: int = 12) -> st.SearchStrategy[Case]:
    """Whole requests: Cookie lines from ``lines`` mixed with spoofed and other headers, in any order."""
    header = st.one_of(cookie_header(lines), cookie_header(lines), spoofed_header, other_header)
    return st.builds(Case, path, st.lists(header, max_size=max_headers).map(tuple))


arbitrary_requests = requests()
large_requests = requests(st.one_of(huge_line, many_pairs_line, cookie_line), max_headers=4)


_pair_sep = st.sampled_from(["; ", ";", " ; ", ";\t", ";;"])


@st.composite
def live_session_requests(draw: st.DrawFn) -> Case:
    """A request that carries a live token in a cookie line among fuzzed pieces, headers and paths, so that the
    properties of an Allow (identity, spoofing, cookie stripping) are exercised as often as those of a denial."""
    live = draw(st.sampled_from(sorted(LIVE)))
    before = draw(st.lists(st.tuples(piece, _pair_sep), max_size=4))
    after = draw(st.lists(st.tuples(_pair_sep, piece), max_size=4))
    line = "".join(p + s for p, s in before) + f"{COOKIE}={live}" + "".join(s + p for s, p in after)
    others = draw(st.lists(st.one_of(spoofed_header, spoofed_header, other_header, cookie_header(cookie_line))))
    at = draw(st.integers(0, len(others)))
    headers = [*others[:at], (draw(_cookie_header_name), line), *others[at:]]
    return Case(draw(path), tuple(headers))


def _single(value: str, spoof: tuple[str, str] | None, where: str) -> Case:
    headers = [("cookie", f"{COOKIE}={value}")] + ([spoof] if spoof else [])
    return Case(where, tuple(headers))


mutated_requests = st.builds(
    _single,
    mutated_token,
    st.one_of(st.none(), spoofed_header),
    st.sampled_from(["/app", "/admin/panel", "/public/page"]),
)
