"""The one rule of the hit path's memos (verified tokens, route rules, allows, encoded answers, decoded records):
a plain dict, bounded in entries, that starts over when full. Starting over costs one recomputation per entry;
an LRU would cost its bookkeeping on every hit, and every memo here answers from a small hot set. A plain dict's
get and set are each safe from gRPC handler threads and the event loop at once."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def keep(memo: dict[K, V], key: K, value: V, max_entries: int) -> V:
    """``value`` stored under ``key`` (the memo emptied first when it holds ``max_entries``), and returned."""
    if len(memo) >= max_entries:
        memo.clear()
    memo[key] = value
    return value
