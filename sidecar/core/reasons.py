"""Why a Check was answered as it was: a closed set of reasons and one table of what each one means.

Every answer the sidecar gives names one ``Reason``. Its row in ``RULES`` says everything the outside world sees of
it: the HTTP status, the ``error`` of a denial's JSON body, the text that goes on the wire (Envoy's dynamic
metadata, the HTTP adapter's header) and into the decision log, the label of ``sidecar_decisions_total``, and what
the invalid-token counter calls it. Adding a reason is one member and one row here (and its test): ``decide``, the
adapters, the log and the metrics all read the row.

Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class Reason(enum.Enum):
    # Members are singletons: hash them by identity in C, not by Enum's Python-level name hash (RULES is read on
    # every Check).
    __hash__ = object.__hash__

    # Allows
    SESSION = enum.auto()  # a live session
    PUBLIC = enum.auto()  # a public route, answered anonymously
    STALE = enum.auto()  # failure_policy stale: the session's last known identity, through a store outage
    # What a session lookup found instead of a live session
    NO_SESSION = enum.auto()  # no session cookie
    FORGED = enum.auto()  # session cookies, none of which a source accepts (bad MAC, malformed): no store read
    UNKNOWN = enum.auto()  # accepted cookies, none naming a live session
    RECORD_CORRUPT = enum.auto()  # the stored record does not decode, open or validate
    RECORD_TOO_LARGE = enum.auto()  # the stored record is over the size or count bounds: refused undecoded
    STORE_UNAVAILABLE = enum.auto()  # the store failed or missed the deadline
    # What the policy decides once the session is known
    MISSING_ROLES = enum.auto()  # the route needs roles the session lacks (the text names them)
    IDENTITY_TOO_LARGE = enum.auto()  # the identity headers would not fit headers.max_bytes
    FORWARDED_CONFLICT = enum.auto()  # forward-auth headers naming the original request disagree


@dataclass(frozen=True, slots=True)
class Rule:
    status: int
    text: str  # on the wire (metadata, response header) and in the decision log; also the body's "reason"
    metric: str  # the reason label of sidecar_decisions_total: never grows with data
    error: str = ""  # the "error" of a denial's JSON body ("" for allows)
    headers: tuple[tuple[str, str], ...] = ()  # added to a denial
    invalid: str | None = None  # the kind the invalid-token counter and the abuse tracker count


RULES: Mapping[Reason, Rule] = MappingProxyType(
    {
        Reason.SESSION: Rule(200, "session", "session"),
        Reason.PUBLIC: Rule(200, "public", "public"),
        Reason.STALE: Rule(200, "stale", "stale"),
        Reason.NO_SESSION: Rule(401, "session_required", "session_required", "unauthenticated"),
        Reason.FORGED: Rule(401, "session_invalid", "session_invalid", "unauthenticated", invalid="forged"),
        Reason.UNKNOWN: Rule(401, "session_invalid", "session_invalid", "unauthenticated", invalid="unknown"),
        # A corrupt record reads like an unknown token, as it did before records were refused by name.
        Reason.RECORD_CORRUPT: Rule(401, "session_invalid", "session_invalid", "unauthenticated", invalid="unknown"),
        Reason.RECORD_TOO_LARGE: Rule(
            401, "session_record_too_large", "session_record_too_large", "unauthenticated", invalid="unknown"
        ),
        Reason.STORE_UNAVAILABLE: Rule(
            503, "session_store_unavailable", "session_store_unavailable", "unavailable", (("retry-after", "1"),)
        ),
        Reason.MISSING_ROLES: Rule(403, "missing_roles", "missing_roles", "forbidden"),
        Reason.IDENTITY_TOO_LARGE: Rule(403, "identity_too_large", "identity_too_large", "forbidden"),
        # 403, not 400: nginx's auth_request passes only 401 and 403 on (anything else becomes a 500).
        Reason.FORWARDED_CONFLICT: Rule(403, "forwarded_conflict", "forwarded_conflict", "forbidden"),
    }
)

# A reason's text may carry a detail after ":" (missing_roles:admin,ops); its label is the part before.
_LABELS: Mapping[str, str] = MappingProxyType({rule.text: rule.metric for rule in RULES.values()})
OTHER_LABEL = "other"


def metric_label(text: str) -> str:
    """The metric label of a decision's reason text: its family's, or ``other`` for a text no rule has (a label
    can never grow with user or configuration data)."""
    label = _LABELS.get(text)
    if label is None:
        family, colon, _ = text.partition(":")
        label = _LABELS.get(family) if colon else None
    return label if label is not None else OTHER_LABEL


def _check_table() -> None:
    missing = [reason.name for reason in Reason if reason not in RULES]
    if missing:  # a reason without a row would surface as a KeyError on the request path
        raise RuntimeError(f"reasons without a rule: {', '.join(missing)}")


_check_table()
