"""A Decision as an ext_authz answer, before any transport: what the gRPC and the HTTP adapters both render.

As OPA-Envoy's ``envoyauth`` reads one evaluation result for its gRPC and HTTP servers, the adapters here take
the parts of an answer from one place and only translate them into their wire form (``grpc_v3``: a
``CheckResponse``; ``http_answers``: HTTP/1.1 bytes):

- **status, headers, body**: an ``Allow`` is ``200`` with the headers to set on the upstream request
  (``headers_to_set``, overwriting) and the client-sent ones to drop (``headers_to_remove``), no body; a ``Deny``
  is its own status, the headers and body the client gets.
- **metadata**: what the answer reports for Envoy's access log (``allow_metadata``, ``deny_metadata``). gRPC
  carries all of it as ``dynamic_metadata``; HTTP carries the keys its status line does not already say as
  ``x-authz-*`` headers, which Envoy's ``dynamic_metadata_from_headers`` turns back into metadata. A key added
  here reaches both.
- **memoized**: the common denials are the same ``Deny`` object every time (``core.decision``), so each
  transport encodes one once (``Denials``; a redirect carries the request's URL and never is). An allow's metadata
  is the same for every request of a session, so each transport renders it once per (reason, user, session)
  (``AllowMetadata``): a logged-in user's request costs a lookup there, not a dict and its encoding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Generic, TypeVar

from sidecar.core.decision import Allow, Deny, unavailable

# Keys of the metadata; DECISION and STATUS are what an HTTP status line already says.
DECISION = "decision"
REASON = "reason"
USER_ID = "user_id"
SESSION_ID = "session_id"
STATUS = "status"
IN_STATUS_LINE = frozenset((DECISION, STATUS))

MAX_MEMOIZED_DENIALS = 256  # per transport: the reasons' constant denials, with room for their details
MAX_MEMOIZED_SESSIONS = 4096  # per transport: the allow metadata of the sessions seen last

T = TypeVar("T")


def allow_metadata(allow: Allow) -> dict[str, str]:
    """An allow's metadata: its reason (session, stale, public) and, for a session, the user and session handle."""
    return _allow_metadata(allow.reason, allow.user_id, allow.session_id)


def _allow_metadata(reason: str, user_id: str | None, session_id: str | None) -> dict[str, str]:
    metadata = {DECISION: "allow", REASON: reason}
    if user_id is not None:
        metadata[USER_ID] = user_id
    if session_id is not None:
        metadata[SESSION_ID] = session_id
    return metadata


def deny_metadata(deny: Deny) -> dict[str, str | int]:
    """A denial's metadata: its reason and status."""
    return {DECISION: "deny", REASON: deny.reason, STATUS: deny.status}


def memoizable(deny: Deny) -> bool:
    """A denial whose answer is the same for every request denied so: any but a redirect to the login page."""
    return deny.status != 302


def unanswerable() -> Deny:
    """The answer to a request that cannot be read or a decision that cannot be sent safely: the 503 a store
    failure gets, never an allow and never a transport error (which ``failure_mode_allow`` could turn into one)."""
    return unavailable()


class AllowMetadata(Generic[T]):
    """One transport's rendering of allow metadata, made once per (reason, user, session) for the sessions seen
    last (at most ``max_entries``). ``render`` must treat what it is given as read-only, and so must its callers
    what it returns: the same object answers every request of the session."""

    __slots__ = ("_rendered", "of")

    def __init__(self, render: Callable[[dict[str, str]], T], max_entries: int = MAX_MEMOIZED_SESSIONS) -> None:
        def rendered(reason: str, user_id: str | None, session_id: str | None) -> T:
            return render(_allow_metadata(reason, user_id, session_id))

        # A render that raises stores nothing, so an unsafe value is refused on every request that carries it.
        cached = self._rendered = functools.lru_cache(maxsize=max_entries)(rendered)

        def of(allow: Allow) -> T:
            return cached(allow.reason, allow.user_id, allow.session_id)

        self.of: Callable[[Allow], T] = of  # an attribute, not a method: the hot path calls it with no binding

    def __len__(self) -> int:
        return self._rendered.cache_info().currsize


class Denials(Generic[T]):
    """One transport's encoded denials, built once per ``Deny`` (at most ``max_entries``; a redirect never)."""

    __slots__ = ("_encoded", "of")

    def __init__(self, encode: Callable[[Deny], T], max_entries: int = MAX_MEMOIZED_DENIALS) -> None:
        encoded: dict[Deny, T] = {}

        def of(deny: Deny) -> T:
            answer = encoded.get(deny)
            if answer is None:
                answer = encode(deny)
                if memoizable(deny) and len(encoded) < max_entries:
                    encoded[deny] = answer
            return answer

        self._encoded = encoded
        self.of: Callable[[Deny], T] = of  # a closure, not a method: the hot path calls it like a function

    def __contains__(self, deny: object) -> bool:
        return deny in self._encoded

    def __len__(self) -> int:
        return len(self._encoded)
