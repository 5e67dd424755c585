"""What the service decided, made visible: Prometheus counters, the decision log, and repeated invalid tokens.

The decision log has one line per denial and a sampled fraction (``log.sample_allows``) of allows, at INFO on the
``sidecar.decision`` logger. A line names the session only by its non-secret handle (``session_id``) and the
request path without its query string; never a token, a cookie or a header value the client sent.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.abuse import RepeatedInvalidTokens
from sidecar.core.decision import Allow, Decision
from sidecar.core.request import RequestView
from sidecar.core.session import SessionRecord
from sidecar.metrics import Metrics

decision_log = logging.getLogger("sidecar.decision")
abuse_log = logging.getLogger("sidecar.abuse")

MAX_LOGGED_PATH = 256


def logged_path(path: str) -> str:
    """The path of a request target without query or fragment (they can carry secrets), cut to a sane length."""
    bare = path.split("?", 1)[0].split("#", 1)[0]
    return bare if len(bare) <= MAX_LOGGED_PATH else bare[:MAX_LOGGED_PATH] + "…"


@dataclass(frozen=True, slots=True)
class Observation:
    """One decided Check: the decision and what led to it."""

    decision: Decision
    route: str | None  # the prefix of the route rule that applied
    record: SessionRecord | None  # the session the decision was about, when one resolved
    invalid: str | None  # "forged" or "unknown" when the request's session cookies were all invalid
    seconds: float
    session_source: str = ""  # the kind of source the session came from (native, spring-session, ...)


def decision_fields(request: RequestView, seen: Observation) -> dict[str, object]:
    """The fields of one decision log line (pure)."""
    decision, record = seen.decision, seen.record
    allowed = isinstance(decision, Allow)
    return {
        "decision": "allow" if allowed else "deny",
        "status": decision.status,
        "reason": decision.reason,
        "invalid_token": seen.invalid,
        "user_id": record.user_id if record is not None else None,
        "session_id": record.session_id if record is not None else None,
        "session_source": seen.session_source or None,
        "method": request.method,
        "host": request.host,
        "path": logged_path(request.path),
        "route": seen.route,
        "source": request.source or None,
        "duration_ms": round(seen.seconds * 1000, 3),
    }


class DecisionObserver:
    def __init__(
        self,
        metrics: Metrics | None,
        *,
        sample_allows: float,
        tracker: RepeatedInvalidTokens | None = None,
        clock: Callable[[], float] = time.monotonic,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self.metrics = metrics
        self.tracker = tracker
        self._sample_allows = sample_allows
        self._clock = clock
        self._sample = sample
        self._tracker_lock = threading.Lock()  # decisions come from gRPC handler threads and the event loop

    def observe(self, request: RequestView, seen: Observation) -> None:
        decision = seen.decision
        allowed = isinstance(decision, Allow)
        if self.metrics is not None:
            self.metrics.decided("allow" if allowed else "deny", decision.status, decision.reason, seen.seconds)
        if seen.invalid is not None:
            self._invalid_token(request, seen.invalid)
        if allowed and not (self._sample_allows and self._sample() < self._sample_allows):
            return
        if decision_log.isEnabledFor(logging.INFO):
            decision_log.info("decision", extra={"fields": decision_fields(request, seen)})

    def _invalid_token(self, request: RequestView, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.invalid_token_kinds[kind].inc()
        tracker, source = self.tracker, request.source
        if tracker is None or not source:
            return
        with self._tracker_lock:
            flagged = tracker.record(source, self._clock())
        if flagged:
            if self.metrics is not None:
                self.metrics.repeat_offenders.inc()
            abuse_log.warning(
                "repeated invalid session tokens",
                extra={"fields": {"source": source, "count": tracker.threshold, "window_s": tracker.window}},
            )

    def source_read(self, source: str, outcome: str) -> None:
        """One read of a session source's store, by what it found (session, absent, refused)."""
        if self.metrics is not None:
            self.metrics.source_reads.labels(source, outcome).inc()

    def sync(self) -> None:
        """Refresh the gauges that are states, not events (called periodically)."""
        if self.metrics is not None and self.tracker is not None:
            with self._tracker_lock:
                flagged = self.tracker.flagged(self._clock())
            self.metrics.offending_sources.set(flagged)
