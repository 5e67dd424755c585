"""The seam between the authorization service and where sessions come from.

A source owns its cookie names, how a cookie value becomes candidates (the native source verifies a MAC; a
framework's source checks its id format or signature: what cannot be valid never costs a store read), and how a
candidate resolves to an identity with an expiry (a ``SessionRecord``; ``is_live`` says whether it still holds).
The service asks its sources in order and knows no token or record format.

A candidate is a ``SessionKey``: where the source's store keeps the session (``tag``: a hash-slot tag or "";
``digest``: the name the cache, the refused-records memo and invalidation messages use for it).

Each question has a no-I/O form (``*_now``), so a Check the process can answer from memory is answered without
scheduling anything, and an async form for the rest. The async forms may raise ``StoreError``; the service turns
that (or its deadline) into the failure policy's answer, asking ``fallback`` first.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.core.reasons import Reason
from sidecar.core.session import SessionRecord
from sidecar.core.tokens import SessionKey

# At most this many candidates are looked up per Check, whatever the sources (CONTRACT: "at most 3 are tried").
MAX_CANDIDATES = 3

# At most this many distinct values of a source's cookies are looked at per Check (each may cost a signature check
# per configured secret): a browser sends one, or a few for cookies set on several paths or domains, while a
# client stuffing a 60 KiB Cookie header with forged values would otherwise buy thousands of HMACs per request.
MAX_VALUES_EXAMINED = 8


def examined(values: tuple[str, ...]) -> tuple[str, ...]:
    """The values a source looks at: the first MAX_VALUES_EXAMINED distinct ones, in header order."""
    if len(values) <= 1:
        return values
    return tuple(dict.fromkeys(values))[:MAX_VALUES_EXAMINED]


# A lookup's answer: a live session, the reason its stored record is refused (Reason.RECORD_CORRUPT or
# RECORD_TOO_LARGE), or None.
Lookup = SessionRecord | Reason | None


class SessionSource(Protocol):
    @property
    def name(self) -> str:
        """The source's kind as configured (``native``), for logs."""
        ...

    @property
    def cookie_names(self) -> tuple[str, ...]: ...

    def candidates_now(self, values: tuple[str, ...]) -> tuple[SessionKey, ...] | None:
        """The candidates among the values of this source's cookies (header order, at most MAX_CANDIDATES), from
        what is at hand; None when the source must read something first (the native source: its shared key)."""
        ...

    async def candidates(
        self, values: tuple[str, ...], at_hand: tuple[SessionKey, ...] | None
    ) -> tuple[SessionKey, ...]:
        """The candidates, reading what ``candidates_now`` lacked; ``at_hand`` is its answer for the same values
        (reused, never recomputed: an empty one may mean keys changed since, which only a read can tell)."""
        ...

    def lookup_now(self, key: SessionKey, now: float) -> Lookup:
        """What is known of ``key`` without I/O: a live session, a refusal, or None (only a read can tell)."""
        ...

    async def lookup(self, key: SessionKey, now: float) -> Lookup:
        """The live session under ``key`` (its read also refreshes its last-seen time), the refusal of its record,
        or None (no live session)."""
        ...

    def fallback(self, key: SessionKey, now: float) -> SessionRecord | None:
        """The identity to answer ``key`` with when the store failed (failure_policy stale), or None."""
        ...
