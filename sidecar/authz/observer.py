"""What the service decided, made visible: Prometheus counters, the decision log, and repeated invalid tokens.

The decision log has one line per denial and a sampled fraction (``log.sample_allows``) of allows, at INFO on the
``sidecar.decision`` logger. A line names the session only by its non-secret handle (``session_id``) and the
request path without its query string; never a token, a cookie or a header value the client sent.

Counting costs a Check no allocation and no lock: ``decided`` adds to plain numbers owned by the calling thread
(``sidecar.tally``), and ``sync`` (once a second, and before every ``/metrics`` exposition) adds their growth to the
Prometheus metrics. The fields of a log line, and the ``Observation`` they come from, are built only for a line
that is written.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.abuse import RepeatedInvalidTokens
from sidecar.core.decision import Allow, Decision
from sidecar.core.request import RequestView
from sidecar.core.session import SessionRecord
from sidecar.metrics import CHECK_BOUNDS, Metrics
from sidecar.tally import Counts, ThreadTallies

decision_log = logging.getLogger("sidecar.decision")
abuse_log = logging.getLogger("sidecar.abuse")

MAX_LOGGED_PATH = 256
_SUM = "check_seconds_sum"  # the tally key of the summed Check durations
_ALLOW = "allow"
_DENY = "deny"


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
        # None: counted straight into Prometheus (no metrics, or multiprocess mode: see Metrics.shared).
        self._tallies = ThreadTallies() if metrics is not None and not metrics.shared else None

    def decided(
        self,
        request: RequestView,
        decision: Decision,
        seconds: float,
        *,
        route: str | None,
        record: SessionRecord | None,
        invalid: str | None,
        session_source: str = "",
    ) -> None:
        """One decided Check, by the fields of an ``Observation`` (built only if a log line is written)."""
        allowed = isinstance(decision, Allow)
        tallies = self._tallies
        if tallies is not None:
            counts = tallies.mine()
            # One key per decision kind and duration bucket: one count for both metrics.
            key = (_ALLOW if allowed else _DENY, decision.status, decision.reason, bisect_left(CHECK_BOUNDS, seconds))
            counts[key] = counts.get(key, 0) + 1
            counts[_SUM] = counts.get(_SUM, 0.0) + seconds
        elif self.metrics is not None:
            self.metrics.decided(_ALLOW if allowed else _DENY, decision.status, decision.reason, seconds)
        if invalid is not None:
            self._invalid_token(request, invalid)
        if allowed and not (self._sample_allows and self._sample() < self._sample_allows):
            return
        if decision_log.isEnabledFor(logging.INFO):
            seen = Observation(decision, route, record, invalid, seconds, session_source)
            decision_log.info("decision", extra={"fields": decision_fields(request, seen)})

    def observe(self, request: RequestView, seen: Observation) -> None:
        """``decided`` for a caller holding an ``Observation``."""
        self.decided(
            request,
            seen.decision,
            seen.seconds,
            route=seen.route,
            record=seen.record,
            invalid=seen.invalid,
            session_source=seen.session_source,
        )

    def _invalid_token(self, request: RequestView, kind: str) -> None:
        if self._tallies is not None:
            counts = self._tallies.mine()
            key = ("invalid", kind)
            counts[key] = counts.get(key, 0) + 1
        elif self.metrics is not None:
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
        if self._tallies is not None:
            counts = self._tallies.mine()
            key = ("read", source, outcome)
            counts[key] = counts.get(key, 0) + 1
        elif self.metrics is not None:
            self.metrics.source_reads.labels(source, outcome).inc()

    def sync(self) -> None:
        """Publish the counts tallied since the last call and refresh the gauges that are states, not events
        (called once a second and before every exposition)."""
        if self.metrics is not None and self._tallies is not None:
            self._publish(self.metrics, self._tallies.growth())
        if self.metrics is not None and self.tracker is not None:
            with self._tracker_lock:
                flagged = self.tracker.flagged(self._clock())
            self.metrics.offending_sources.set(flagged)

    @staticmethod
    def _publish(metrics: Metrics, grown: Counts) -> None:
        """Add what the threads tallied since the last publication to the Prometheus metrics."""
        decisions: dict[tuple[str, int, str], float] = {}
        buckets: dict[int, float] = {}
        for key, count in grown.items():
            if not isinstance(key, tuple):
                continue
            if key[0] in (_ALLOW, _DENY):
                outcome, status, reason, bucket = key
                decisions[outcome, status, reason] = decisions.get((outcome, status, reason), 0) + count
                buckets[bucket] = buckets.get(bucket, 0) + count
            elif key[0] == "invalid":
                metrics.invalid_token_kinds[key[1]].inc(count)
            elif key[0] == "read":
                metrics.source_reads.labels(key[1], key[2]).inc(count)
        metrics.add_decisions(decisions)
        metrics.add_check_seconds(buckets, grown.get(_SUM, 0.0))
