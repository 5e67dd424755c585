"""Repeated invalid session tokens from one source: counted in a fixed window per source, in a bounded table.

A client that keeps presenting forged, mangled, expired or revoked tokens is either broken or guessing. Each
source (the client address Envoy reports) gets a window of ``window`` seconds from its first invalid token; the
source is *flagged* when its count in that window reaches ``threshold``, once per window, so the caller can log and
count it without repeating itself. The table holds at most ``max_sources`` sources (least recently active are
forgotten first): memory stays bounded whatever an attacker sprays, at the price of under-counting a source that
rotates through more addresses than the table holds.
"""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_THRESHOLD = 10
DEFAULT_WINDOW_SECONDS = 60.0
DEFAULT_MAX_SOURCES = 10_000


class RepeatedInvalidTokens:
    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        window: float = DEFAULT_WINDOW_SECONDS,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        if threshold < 1 or window <= 0 or max_sources < 1:
            raise ValueError("threshold, window and max_sources must be positive")
        self.threshold = threshold
        self.window = window
        self._max_sources = max_sources
        self._sources: OrderedDict[str, list[float]] = OrderedDict()  # source → [window start, count]

    def record(self, source: str, now: float) -> bool:
        """Count one invalid token from ``source``; True exactly when this one reaches the threshold."""
        entry = self._sources.get(source)
        if entry is None or now - entry[0] >= self.window:
            entry = [now, 0.0]
            self._sources[source] = entry
            if len(self._sources) > self._max_sources:
                self._sources.popitem(last=False)
        self._sources.move_to_end(source)
        entry[1] += 1
        return entry[1] == self.threshold

    def count(self, source: str, now: float) -> int:
        entry = self._sources.get(source)
        if entry is None or now - entry[0] >= self.window:
            return 0
        return int(entry[1])

    def flagged(self, now: float) -> int:
        """How many sources are over the threshold in their current window."""
        window, threshold = self.window, self.threshold
        return sum(1 for start, count in self._sources.values() if count >= threshold and now - start < window)

    def __len__(self) -> int:
        return len(self._sources)
