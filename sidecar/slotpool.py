"""A thread pool for ``grpc.server`` whose threads run at most ``slots`` work items at once, a thread waiting on the
event loop handing its slot to another.

grpc's sync server hands each RPC to an executor thread and keeps that thread until the handler returns. A Check
that needs a store read waits for the event loop. On a plain pool of 4 threads, four such waits (a slow store, at
most ``redis.timeout`` each) hold back every cache hit queued behind them; a larger plain pool lets every
runnable thread compete for the GIL (16 threads cost 10-15 % more CPU per cache hit than 4 here, issue #14).

So ``slots`` threads serve the work queue as a plain pool would, each keeping its slot from one item to the next
(no hand-off while nothing waits). A handler about to wait calls ``released()``: its slot goes to a thread waiting
for one, or to a new thread (up to ``max_threads``), which serves the queue meanwhile. The waiting thread finishes
its item without a slot (a few µs of encoding) and then queues for a slot again before it takes more work.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

_Item = tuple["futures.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class SlotPool(futures.Executor):
    def __init__(self, slots: int, max_threads: int, name: str = "grpc-check") -> None:
        if not 1 <= slots <= max_threads:
            raise ValueError("a slot pool needs 1 <= slots <= max_threads")
        self._slot_count = slots
        self._slots = threading.Semaphore(slots)
        self._work: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._queued_for_slot = 0  # threads blocked waiting for a slot
        self._max_threads = max_threads
        self._name = name
        self._numbers = itertools.count()
        self._holding = threading.local()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        future: futures.Future[Any] = futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            while len(self._threads) < self._slot_count:  # the slot holders, started with the first work
                self._start()
            self._work.put((future, fn, args, kwargs))
        return future

    def _start(self) -> None:
        """Start one more thread (the caller holds ``_lock``)."""
        thread = threading.Thread(target=self._serve, name=f"{self._name}_{next(self._numbers)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _take_slot(self) -> None:
        with self._lock:
            self._queued_for_slot += 1
        self._slots.acquire()
        with self._lock:
            self._queued_for_slot -= 1
        self._holding.slot = True

    def _serve(self) -> None:
        self._take_slot()
        try:
            while (item := self._work.get()) is not None:
                future, fn, args, kwargs = item
                if future.set_running_or_notify_cancel():
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:  # the submitter gets it, as from any executor
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
                if not self._holding.slot:  # it waited, slot given away: in line for one before more work
                    self._take_slot()
        finally:
            if getattr(self._holding, "slot", False):
                self._holding.slot = False
                self._slots.release()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Around a wait on something else: the calling pool thread's slot goes to another thread, which serves
        the queue meanwhile; this one finishes its item without a slot (a no-op on any other thread)."""
        if getattr(self._holding, "slot", False):
            self._holding.slot = False
            with self._lock:
                if self._queued_for_slot == 0 and len(self._threads) < self._max_threads and not self._shutdown:
                    self._start()
            self._slots.release()
        yield

    @property
    def threads(self) -> int:
        return len(self._threads)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in threads:  # one end mark each; a thread queued for a slot reads its own once a holder has left
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()
