"""SlotPool: grpc.server's handler threads, at most ``slots`` running at once, a waiting one stepping aside."""

from __future__ import annotations

import threading
import time

import pytest

from sidecar.slotpool import SlotPool


def test_at_most_slots_items_run_at_once_and_every_result_arrives() -> None:
    pool = SlotPool(2, 8)
    running, most = 0, 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i * i

    try:
        results = [pool.submit(work, i) for i in range(12)]
        assert [f.result(5) for f in results] == [i * i for i in range(12)]
    finally:
        pool.shutdown()
    assert most == 2


def test_an_item_waiting_inside_released_lets_another_run_in_its_slot() -> None:
    pool = SlotPool(1, 4)
    answered = threading.Event()

    def waits() -> str:
        with pool.released():  # a Check waiting on the event loop
            assert answered.wait(5), "the other item never ran: the slot was not given up"
        return "finished after the other"

    try:
        waiting = pool.submit(waits)
        other = pool.submit(answered.set)  # a cache hit arriving meanwhile
        other.result(5)
        assert waiting.result(5) == "finished after the other"
    finally:
        pool.shutdown()


def test_released_outside_a_pool_thread_changes_nothing() -> None:
    pool = SlotPool(1, 1)
    try:
        with pool.released():
            pass
        assert pool.submit(lambda: 7).result(5) == 7  # the one slot is still there
    finally:
        pool.shutdown()


def test_slot_holders_serve_the_queue_and_threads_are_added_only_for_waits_up_to_the_bound() -> None:
    pool = SlotPool(2, 3)
    try:
        gate = threading.Event()
        busy = [pool.submit(gate.wait, 5) for _ in range(6)]  # more work than slots: it queues, no thread added
        assert pool.threads == 2
        gate.set()
        assert all(f.result(5) for f in busy)
        hold = threading.Event()

        def waits() -> None:
            with pool.released():
                hold.wait(5)

        waiting = [pool.submit(waits) for _ in range(4)]
        time.sleep(0.3)
        assert pool.threads == 3  # one more for the waits, never past max_threads
        hold.set()
        for f in waiting:
            f.result(5)
        assert pool.submit(lambda: "served").result(5) == "served"
    finally:
        pool.shutdown()


def test_an_exception_reaches_the_submitter_and_the_thread_keeps_serving() -> None:
    pool = SlotPool(1, 1)
    try:
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
        assert pool.submit(lambda: "still here").result(5) == "still here"
    finally:
        pool.shutdown()


def test_shutdown_ends_every_thread_and_refuses_new_work() -> None:
    pool = SlotPool(2, 4, name="shutdown-test")
    gate = threading.Event()
    busy = [pool.submit(gate.wait, 5) for _ in range(3)]
    gate.set()
    assert all(f.result(5) for f in busy)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(print)
    assert not any(t.name.startswith("shutdown-test") and t.is_alive() for t in threading.enumerate())


def test_impossible_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="slots"):
        SlotPool(0, 4)
    with pytest.raises(ValueError, match="slots"):
        SlotPool(5, 4)
