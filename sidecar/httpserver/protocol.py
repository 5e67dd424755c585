"""One HTTP/1.1 connection of a listener (``listen.http``, ``listen.admin``): read requests, ask the handler,
answer in order. What a request means and what its answer says is the ``Handler``'s; this module only moves bytes,
with one parser (httptools) and one set of bounds for every listener.

HTTP/1.1 with keep-alive (``Limits.keep_alive``: False answers one request per connection); a pipelined request
waits for the one before it and is begun only in its turn. A request whose head exceeds
``Limits.max_request_bytes`` gets the handler's ``too_large`` answer, a malformed one (an unknown method token
included) ``bad_request``; both close the connection. Nothing here raises into the event loop.

One connection cannot starve the others or grow without bound: a pipelined burst is parsed ``FEED_BYTES`` at a time
and yields the loop after ``REQUESTS_PER_TURN`` requests; at most ``MAX_IN_FLIGHT`` requests wait for their answer;
reading stops while the client leaves more than ``WRITE_HIGH_WATER`` bytes of answers unread; a request begun must
be complete within ``Limits.request_timeout``; a connection idle for ``Limits.idle_timeout`` is closed, and one
whose answers sit unread that long is dropped.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, cast

import httptools

from sidecar.httpserver.handler import A, Connections, Handler, Q, W

# A burst of pipelined requests arrives in a few big reads. Answering one costs ~100 µs of Python, so 5,000 in one go
# held the loop (and every gRPC Check and the invalidation channel) for 0.6 s. The parser gets FEED_BYTES at a time,
# and the connection yields after REQUESTS_PER_TURN: a turn answers at most ~REQUESTS_PER_TURN + FEED_BYTES / 18
# requests (18 bytes being the shortest request line and end of head).
REQUESTS_PER_TURN = 8
FEED_BYTES = 512
MAX_IN_FLIGHT = 16  # pipelined requests parsed and not yet answered, per connection (Envoy and nginx never pipeline)
# A client that does not read its answers stops being read once this much is buffered for it.
WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024


class _TooLarge(Exception):
    """The request being read is over a size bound."""


class HttpProtocol(asyncio.Protocol, Generic[Q, W, A]):
    """One client connection: parse, ask the handler, answer in order."""

    def __init__(self, handler: Handler[Q, W, A], listener: Connections) -> None:
        self._handler = handler
        self._listener = listener
        self._limits = listener.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._names = handler.header_names
        self._size = 0  # bytes of the request being read
        self._in_message = False
        self._headers_done = False
        self._completed = 0  # requests read so far: the turn budget counts these
        self._last = False  # a request read asked to close after its answer: read no more
        # Input read from the socket and not parsed yet: the rest of a pipelined burst, fed on later turns.
        self._inbox = b""
        self._offset = 0
        self._turn: asyncio.Handle | None = None  # the scheduled feeding of the rest of _inbox
        self._reading = True
        self._writable = True  # False between the transport's pause_writing and resume_writing
        self._writable_again: asyncio.Future[None] | None = None
        # (request; its begun work or None; keep-alive; HEAD; target) of each request read and not yet answered
        self._queue: collections.deque[tuple[Q, W | None, bool, bool, bytes]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0  # loop time of the last bytes read or answer written
        self._draining = False  # the listener is stopping: close after the answer in flight
        self._peer = ""

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._listener.opened(self):
            self._transport.close()  # over max_connections: refused at once, so it holds no descriptor
            return
        self._transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._last_active = self._loop.time()
        self._idle_timer = self._loop.call_later(self._limits.idle_timeout, self._idle_check)
        if not self._limits.keep_alive:  # its one request must arrive in time, begun or not
            self._timer = self._loop.call_later(self._limits.request_timeout, self._timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.closed(self)
        self._queue.clear()
        self._inbox, self._offset = b"", 0
        self._cancel_timer()
        for handle in (self._idle_timer, self._turn):
            if handle is not None:
                handle.cancel()
        self._idle_timer = self._turn = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._last_active = self._loop.time()
        if self._offset < len(self._inbox):  # reading is paused with input left; keep the bytes in order regardless
            self._inbox, self._offset = self._inbox[self._offset :] + data, 0
            self._feed()
            return
        size = len(data)
        queue = self._queue
        if (
            size <= FEED_BYTES
            and self._size + size <= self._limits.max_request_bytes
            and self._writable
            and not self._last
            and len(queue) < MAX_IN_FLIGHT
        ):
            # The common read, all of it one step of _feed (a request or a few, nothing left from before), without
            # its bookkeeping: the same bounds, the same refusals.
            self._size += size
            try:
                self._parser.feed_data(data)  # a complete request resets _size
            except Exception as exc:  # each kind refused as _feed refuses it
                self._refuse(exc)
                return
            if self._in_message and self._timer is None:
                self._timer = self._loop.call_later(self._limits.request_timeout, self._timed_out)
            if not (self._reading and self._writable and not self._last and len(queue) < MAX_IN_FLIGHT):
                self._flow()
            return
        self._inbox, self._offset = data, 0
        self._feed()

    def eof_received(self) -> bool | None:
        if self._task is None:
            return None  # nothing in flight: close
        self._draining = True  # answer what was asked, then close
        return True

    def pause_writing(self) -> None:
        # Called from inside transport.write(), possibly within a parser callback: only flags and stops reading.
        self._writable = False
        self._set_reading(False)

    def resume_writing(self) -> None:
        self._writable = True
        waiter, self._writable_again = self._writable_again, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._flow()

    # --- reading

    def _may_parse(self) -> bool:
        transport = self._transport
        return (
            transport is not None
            and not transport.is_closing()
            and self._writable
            and not self._last
            and len(self._queue) < MAX_IN_FLIGHT
        )

    def _feed(self) -> None:
        """Parse buffered input until it runs out, this turn's budget is spent, or the connection must wait."""
        self._turn = None
        data, offset = self._inbox, self._offset
        end = len(data)
        budget = self._completed + REQUESTS_PER_TURN
        max_request_bytes = self._limits.max_request_bytes
        chunks: memoryview | None = None  # a burst is fed as views, never copied
        try:
            while offset < end and self._completed < budget and self._may_parse():
                room = max_request_bytes - self._size
                if room <= 0:
                    raise _TooLarge
                step = min(room, FEED_BYTES, end - offset)
                self._size += step
                offset += step
                if step == end:  # offset was 0: the whole read
                    self._parser.feed_data(data)  # a complete request resets _size
                else:
                    if chunks is None:
                        chunks = memoryview(data)
                    self._parser.feed_data(chunks[offset - step : offset])
        except Exception as exc:
            self._refuse(exc)
            return
        finally:
            if chunks is not None:
                chunks.release()
        if offset < end and not self._last:
            self._offset = offset
        else:
            self._inbox, self._offset = b"", 0
        if self._in_message and self._timer is None:
            self._timer = self._loop.call_later(self._limits.request_timeout, self._timed_out)
        if not (
            self._reading and offset == end and self._writable and not self._last and len(self._queue) < MAX_IN_FLIGHT
        ):
            self._flow()  # else reading goes on as it is, with no input left for a later turn

    def _refuse(self, exc: Exception) -> None:
        """Answer input the parser or a bound refused, and close: called while ``exc`` (raised feeding the parser)
        is being handled, so a bug's traceback is logged with it."""
        refusals = self._handler.refusals
        if isinstance(exc, _TooLarge):
            self._fail(refusals.body_too_large if self._headers_done else refusals.too_large)
        elif isinstance(exc, httptools.HttpParserCallbackError):
            self._fail(refusals.too_large if isinstance(exc.__context__, _TooLarge) else refusals.bad_request)
        elif isinstance(exc, (httptools.HttpParserError, httptools.HttpParserUpgrade)):  # malformed, Upgrade, CONNECT
            self._fail(refusals.bad_request)
        else:  # never a traceback into the event loop
            self._listener.log.exception("%s: unexpected error reading a request", self._listener.name)
            self._fail(refusals.bad_request)

    def _flow(self) -> None:
        """Read while there is room to: no input left unparsed, answers drained, few requests in flight."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        backlog = self._offset < len(self._inbox)
        if backlog and self._turn is None and self._may_parse():
            self._turn = self._loop.call_soon(self._feed)  # the rest after the other connections' turn
        may_read = not backlog and self._writable and not self._last and len(self._queue) < MAX_IN_FLIGHT
        self._set_reading(may_read)

    def _set_reading(self, reading: bool) -> None:
        transport = self._transport
        if reading == self._reading or transport is None or transport.is_closing():
            return
        self._reading = reading
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    # --- httptools callbacks

    def on_message_begin(self) -> None:
        self._in_message = True
        self._headers_done = False
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = self._names.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
        self._headers.append((key, value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if len(self._headers) > self._limits.max_header_lines:  # their bytes are bounded already; their count here
            raise _TooLarge

    def on_message_complete(self) -> None:
        self._in_message = False
        self._size = 0
        self._completed += 1
        if self._timer is not None:
            self._cancel_timer()
        if self._last:  # pipelined after a request that closes the connection: never answered
            return
        parser, handler = self._parser, self._handler
        method, target = parser.get_method(), self._url
        request = handler.read(method, target, self._headers, self._peer)
        keep_alive = self._limits.keep_alive and parser.should_keep_alive()
        head = method == b"HEAD"
        self._last = not keep_alive
        # An Upgrade or CONNECT request completes here and then fails the parser (a 400): never answer it first.
        work: W | None = None
        if self._task is None and not self._queue and self._writable and not parser.should_upgrade():
            step = handler.begin(request)
            if not isinstance(step, handler.waits):  # no I/O needed: answer now, without a task
                self._respond(request, target, keep_alive, head, step)  # type: ignore[arg-type]  # not a W: an A
                return
            work = step
        self._queue.append((request, work, keep_alive, head, target))
        if self._task is None:
            self._task = self._loop.create_task(self._answer())

    # --- answering

    def _respond(self, request: Q, target: bytes, keep_alive: bool, head: bool, answer: A) -> bool:
        """Write the answer; True when the connection is done (closed or gone)."""
        try:
            close = not keep_alive or self._draining
            response = self._handler.encode(request, target, answer, close, head)
        except Exception:  # a handler bug: answered, logged, and the connection closed
            self._listener.log.exception("%s: unexpected error answering a request", self._listener.name)
            close, response = True, self._handler.refusals.unanswerable
        transport = self._transport
        if transport is None:
            return True
        transport.write(response)
        self._last_active = self._loop.time()
        if close:
            self._queue.clear()
            self._inbox, self._offset = b"", 0
            transport.close()
        return close

    async def _answer(self) -> None:
        queue, handler = self._queue, self._handler
        while queue:
            if not self._writable:  # the client has not read the answers before: wait for it before deciding
                self._writable_again = self._loop.create_future()
                await self._writable_again
            request, work, keep_alive, head, target = queue.popleft()
            # A pipelined request is begun only now, in turn, so it is decided as of its answer.
            step = handler.begin(request) if work is None else work
            try:
                answer = await handler.finish(step) if isinstance(step, handler.waits) else step
            except Exception:
                self._listener.log.exception("%s: unexpected error answering a request", self._listener.name)
                self._fail(handler.refusals.unanswerable)
                return
            if self._respond(request, target, keep_alive, head, answer):  # type: ignore[arg-type]  # not a W: an A
                if self._transport is None:
                    return
                break
            self._flow()  # room in the queue: parse the rest of a burst
        self._task = None
        self._flow()

    def _fail(self, response: bytes) -> None:
        """Answer a request that cannot be read (after any answer still in flight) and close."""
        self._inbox, self._offset = b"", 0
        transport = self._transport
        if transport is None:
            return
        self._cancel_timer()
        self._queue.clear()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None
        if response:
            transport.write(response)
            self._last_active = self._loop.time()
        transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.close()

    def _idle_check(self) -> None:
        """Close a connection that neither sent a byte nor got an answer for ``idle_timeout``, and drop one whose
        answer sits unread that long (also after a closing answer: close() would wait for the client forever)."""
        self._idle_timer = None
        transport = self._transport
        if transport is None or (transport.is_closing() and not transport.get_write_buffer_size()):
            return
        idle_timeout = self._limits.idle_timeout
        left = self._last_active + idle_timeout - self._loop.time()
        if left <= 0 and self._task is not None and self._writable:
            left = idle_timeout  # the answer waits on I/O the handler bounds (a Check's store deadline)
        if left > 0:
            self._idle_timer = self._loop.call_later(left, self._idle_check)
        elif transport.get_write_buffer_size():
            transport.abort()  # it does not read its answers: close() would wait for it forever
        else:
            transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def shutdown(self) -> None:
        """The listener is stopping: close now when idle, else after the answer in flight."""
        self._draining = True
        if self._task is None and not self._in_message and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
