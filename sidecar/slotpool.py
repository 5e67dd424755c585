"""A thread pool for ``grpc.server`` whose threads run at most ``slots`` work items at once, and give their slot up
while they wait on the event loop.

grpc's sync server hands each RPC to an executor thread and keeps that thread until the handler returns. A Check
that needs a store read waits for the event loop. On a plain pool of 4 threads, four such waits (a slow store, at
most ``redis.timeout`` each) hold back every cache hit queued behind them; a larger plain pool lets every
runnable thread compete for the GIL (16 threads cost 10-15 % more CPU per cache hit than 4 here, issue #14). So
threads are added as work arrives (up to ``max_threads``), but only ``slots`` of them run at a time: a handler
waiting on the loop steps aside (``released``) and another item runs meanwhile.
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
        self._slots = threading.Semaphore(slots)
        self._idle = threading.Semaphore(0)  # one release per finished item: a thread that is free for more
        self._work: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
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
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_threads:
                thread = threading.Thread(target=self._serve, name=f"{self._name}_{next(self._numbers)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return future

    def _serve(self) -> None:
        while (item := self._work.get()) is not None:
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                with self._slots:
                    self._holding.slot = True
                    try:
                        result = fn(*args, **kwargs)
                    except BaseException as exc:  # the submitter gets it, as from any executor
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
                    finally:
                        self._holding.slot = False
            self._idle.release()  # after the item, as ThreadPoolExecutor does: a token means a thread is free

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """Around a wait on something else: the calling pool thread's slot goes to another item meanwhile (a
        no-op on any other thread)."""
        if not getattr(self._holding, "slot", False):
            yield
            return
        self._slots.release()
        try:
            yield
        finally:
            self._slots.acquire()

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
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()
