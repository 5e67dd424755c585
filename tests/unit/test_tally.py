"""Per-thread tallies: each thread adds to its own counts, one reader gets the growth of all of them."""

from __future__ import annotations

import threading

from sidecar.tally import Counts, ThreadTallies


def count(tallies: ThreadTallies, key: str, times: int = 1) -> None:
    counts = tallies.mine()
    for _ in range(times):
        counts[key] = counts.get(key, 0) + 1


def in_thread(tallies: ThreadTallies, key: str, times: int) -> None:
    worker = threading.Thread(target=count, args=(tallies, key, times))
    worker.start()
    worker.join()


def test_each_thread_has_its_own_counts_and_keeps_them() -> None:
    tallies = ThreadTallies()
    mine = tallies.mine()
    theirs: list[Counts] = []
    worker = threading.Thread(target=lambda: theirs.append(tallies.mine()))
    worker.start()
    worker.join()
    assert tallies.mine() is mine and theirs[0] is not mine


def test_growth_is_what_was_counted_since_the_previous_read() -> None:
    tallies = ThreadTallies()
    count(tallies, "a", 3)
    assert tallies.growth() == {"a": 3}
    assert tallies.growth() == {}
    count(tallies, "a", 2)
    count(tallies, "b")
    assert tallies.growth() == {"a": 2, "b": 1}


def test_the_counts_of_every_thread_add_up_including_threads_that_ended() -> None:
    tallies = ThreadTallies()
    count(tallies, "a", 5)
    in_thread(tallies, "a", 7)
    in_thread(tallies, "b", 2)
    assert tallies.growth() == {"a": 12, "b": 2}
    in_thread(tallies, "a", 1)  # the ended threads were retired: their counts are not read twice
    assert tallies.growth() == {"a": 1}
    assert tallies.growth() == {}


def test_an_ended_thread_is_dropped_but_what_it_counted_is_not() -> None:
    tallies = ThreadTallies()
    for _ in range(50):
        in_thread(tallies, "a", 1)
    assert tallies.growth() == {"a": 50}
    assert len(tallies._threads) == 0  # no dict kept per thread that ever counted
    count(tallies, "a")
    assert tallies.growth() == {"a": 1}


def test_float_sums_grow_and_never_come_out_negative() -> None:
    tallies = ThreadTallies()
    mine = tallies.mine()
    mine["sum"] = 0.1 + 0.2
    assert tallies.growth() == {"sum": 0.1 + 0.2}
    assert tallies.growth() == {}
    mine["sum"] += 1e-9
    (grown,) = tallies.growth().values()
    assert 0 < grown < 2e-9
