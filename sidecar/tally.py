"""Counts kept in plain numbers by the threads that make them, added up now and then by one reader.

A Check is decided on a gRPC handler thread or on the event loop. Counting it into Prometheus costs a lock per
metric; here each thread adds to a dict only it writes (no lock, no lost increment under the GIL: the one writer's
read-modify-write is never interleaved with another writer's), and ``ThreadTallies.growth`` copies every thread's
dict (``dict.copy`` is atomic under the GIL) and returns what grew since the previous call, for the caller to
publish. Counts only grow; a thread's dict outlives the thread until its last counts have been read.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

Counts = dict[Hashable, float]


class ThreadTallies:
    """Monotonic per-thread counts by key, read as their total growth since the last read."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()  # registration and reads; never taken by a counting thread once registered
        self._threads: list[tuple[threading.Thread, Counts]] = []
        self._retired: Counts = {}  # the final counts of threads that ended
        self._read: Counts = {}  # the totals returned so far

    def mine(self) -> Counts:
        """The calling thread's counts, to add to (only from this thread: ``counts[k] = counts.get(k, 0) + n``)."""
        try:
            counts: Counts = self._local.counts
        except AttributeError:
            counts = self._register()
        return counts

    def _register(self) -> Counts:
        counts: Counts = {}
        with self._lock:
            self._threads.append((threading.current_thread(), counts))
        self._local.counts = counts
        return counts

    def growth(self) -> Counts:
        """What every thread counted since the previous call, by key (only keys that grew)."""
        with self._lock:
            totals = dict(self._retired)
            alive: list[tuple[threading.Thread, Counts]] = []
            for thread, counts in self._threads:
                # Whether it ended before the copy: an ended thread adds nothing more, so it can be retired.
                ended = not thread.is_alive()
                for key, count in counts.copy().items():
                    totals[key] = totals.get(key, 0) + count
                    if ended:
                        self._retired[key] = self._retired.get(key, 0) + count
                if not ended:
                    alive.append((thread, counts))
            self._threads = alive
            grown: Counts = {}
            for key, total in totals.items():
                delta = total - self._read.get(key, 0)
                if delta > 0:  # a float sum added in another order may come out a hair lower: never negative
                    grown[key] = delta
                    self._read[key] = total
            return grown
