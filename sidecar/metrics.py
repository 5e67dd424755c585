"""Prometheus metrics of one sidecar process, and their exposition for ``/metrics`` on ``listen.admin``.

Everything the request path counts goes through :class:`Metrics`, whose children are bound once (no label lookups
per Check). The decisions are not counted into Prometheus one by one: the observer tallies them in plain numbers per
thread (``sidecar.tally``) and adds their growth here once a second and before each exposition
(:meth:`Metrics.add_decisions`, :meth:`Metrics.add_check_seconds`). The cache keeps plain integer counters too (it
must not know about Prometheus); :meth:`Metrics.sync_cache` turns their growth into counter increments.

Under ``serve --workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start: each one
writes its values to files there (prometheus_client's multiprocess mode) and worker 0's ``/metrics`` adds them up,
so one scrape sees the whole pod. ``sidecar_workers_active`` is a live sum of the workers that are up.
"""

from __future__ import annotations

import bisect
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from sidecar.core.reasons import RULES, metric_label

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# From the in-process fast path (tens of µs) to the store deadline and Envoy's timeout (150 / 250 ms).
CHECK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)
# The upper bounds of sidecar_check_duration_seconds as prometheus_client stores them (+Inf last).
CHECK_BOUNDS = (*CHECK_BUCKETS, math.inf)
STORE_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)

# The kinds of invalid session cookies the reasons table names (forged, unknown), in its order.
INVALID_TOKEN_KINDS = tuple(dict.fromkeys(rule.invalid for rule in RULES.values() if rule.invalid is not None))


class CacheCounts(Protocol):
    """What :meth:`Metrics.sync_cache` reads of the cache's statistics (``store.cache.CacheStats``).

    A protocol, not an import of the store: ``store/metered.py`` imports this module, and metrics need not know
    the cache to count what it reports.
    """

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def invalidations(self) -> int: ...
    @property
    def flushes(self) -> int: ...
    @property
    def entries(self) -> int: ...


class Metrics:
    """The metrics of this process, registered in ``registry`` (see ``process_registry``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        # Multiprocess mode: every worker writes its values to files that worker 0's exposition adds up; it cannot
        # ask the others to publish a tally first, so there each decision is counted as it is made.
        self.shared = multiprocess_dir() is not None
        self._seen = (0, 0, 0, 0)  # the cache's hits, misses, invalidations and flushes at the last sync
        self.decisions = Counter(
            "sidecar_decisions",
            "Check decisions by outcome (allow/deny), HTTP status and reason.",
            ("outcome", "status", "reason"),
            registry=registry,
        )
        self.check_seconds = Histogram(
            "sidecar_check_duration_seconds",
            "Time from a Check's arrival in the service to its decision (store round trip included).",
            buckets=CHECK_BUCKETS,
            registry=registry,
        )
        self.store_seconds = Histogram(
            "sidecar_store_duration_seconds",
            "Round trip of a session store operation, successful or not.",
            ("operation",),
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.store_errors = Counter(
            "sidecar_store_errors",
            "Session store operations that failed, by operation and error (timeout, unavailable, corrupt).",
            ("operation", "error"),
            registry=registry,
        )
        self.cache_lookups = Counter(
            "sidecar_cache_lookups", "Session cache lookups by result (hit/miss).", ("result",), registry=registry
        )
        self.cache_invalidations = Counter(
            "sidecar_cache_invalidations",
            "Cache invalidations: one session evicted by a published revocation (message) or everything dropped "
            "because the invalidation channel was lost or re-established (flush).",
            ("kind",),
            registry=registry,
        )
        self.cache_entries = Gauge(
            "sidecar_cache_entries", "Sessions held in the cache.", registry=registry, multiprocess_mode="livesum"
        )
        self.source_reads = Counter(
            "sidecar_source_reads",
            "Reads of a session source's store (the native cache's hits are not reads), by source kind and what the "
            "read found: session, absent (no live session, or one without a user) or refused (a record that does "
            "not decode or is over the bounds).",
            ("source", "result"),
            registry=registry,
        )
        self.invalid_tokens = Counter(
            "sidecar_invalid_tokens",
            "Requests whose session cookies were all invalid: forged or malformed (never sent to the store) or "
            "unknown (well-formed, but no live session).",
            ("kind",),
            registry=registry,
        )
        self.repeat_offenders = Counter(
            "sidecar_invalid_token_sources_flagged",
            "Times a source crossed the repeated-invalid-token threshold within its window.",
            registry=registry,
        )
        self.offending_sources = Gauge(
            "sidecar_invalid_token_sources",
            "Sources currently over the repeated-invalid-token threshold.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.store_ready = Gauge(
            "sidecar_store_ready",
            "1 while the session store answers its health probe, else 0.",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.workers = Gauge(
            "sidecar_workers_active",
            "Sidecar processes serving Checks (1, or the live workers of serve --workers N).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._hit = self.cache_lookups.labels("hit")
        self._miss = self.cache_lookups.labels("miss")
        self._evicted = self.cache_invalidations.labels("message")
        self._flushed = self.cache_invalidations.labels("flush")
        self.invalid_token_kinds = {kind: self.invalid_tokens.labels(kind) for kind in INVALID_TOKEN_KINDS}
        self._children: dict[tuple[str, int, str], Counter] = {}

    def decided(self, outcome: str, status: int, reason: str, seconds: float) -> None:
        key = (outcome, status, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.decisions.labels(outcome, str(status), metric_label(reason))
        child.inc()
        self.check_seconds.observe(seconds)

    def add_decisions(self, counts: Mapping[tuple[str, int, str], float]) -> None:
        """Count decisions by (outcome, status, reason text), as many of each as ``counts`` says."""
        for (outcome, status, reason), count in counts.items():
            key = (outcome, status, reason)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.decisions.labels(outcome, str(status), metric_label(reason))
            child.inc(count)

    def add_check_seconds(self, buckets: Mapping[int, float], total: float) -> None:
        """Add observations to sidecar_check_duration_seconds by bucket index (``check_bucket``) and their sum:
        what as many ``observe`` calls would have added (tests/unit/test_metrics.py compares the expositions)."""
        histogram = self.check_seconds
        for index, count in buckets.items():
            histogram._buckets[index].inc(count)  # the values observe() increments
        if total:
            histogram._sum.inc(total)

    def sync_cache(self, stats: CacheCounts) -> None:
        """Add the cache's counter growth since the last call (its counters only grow)."""
        counts = (stats.hits, stats.misses, stats.invalidations, stats.flushes)
        counters = (self._hit, self._miss, self._evicted, self._flushed)
        for counter, now, before in zip(counters, counts, self._seen, strict=True):
            if now > before:
                counter.inc(now - before)
        self._seen = counts
        self.cache_entries.set(stats.entries)


def check_bucket(seconds: float) -> int:
    """The index of the sidecar_check_duration_seconds bucket ``seconds`` falls in (the first bound >= it)."""
    return bisect.bisect_left(CHECK_BOUNDS, seconds)


def process_registry() -> CollectorRegistry:
    """A registry of its own for a serving process, with the standard process, platform and GC collectors (a fresh
    one per ``serve``, so starting twice in one interpreter, as tests do, never registers a name twice)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double the exposition and no dashboard reads them
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition of ``registry``, or of every worker's files in multiprocess mode."""
    directory = multiprocess_dir()
    if directory is not None:
        merged = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(registry)


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """The directory the workers share their metrics through, emptied, and whether we created it (and so remove
    it at the end). An operator's ``PROMETHEUS_MULTIPROC_DIR`` is used when set (e.g. an emptyDir volume)."""
    given = multiprocess_dir()
    if given is None:
        return tempfile.mkdtemp(prefix="session-sidecar-metrics-"), True
    Path(given).mkdir(parents=True, exist_ok=True)
    for stale in Path(given).glob("*.db"):  # a previous run's values would be added to this one's
        stale.unlink()
    return given, False


def worker_exited(pid: int, directory: str) -> None:
    """Drop the live gauges of a worker that is gone (its counters keep counting in the totals)."""
    prometheus_multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
