"""HTTP ext_authz and forward-auth on ``listen.http``: HTTP/1.1 request → RequestView, Decision → response.

Translation only, like the gRPC adapter. One small asyncio protocol with the httptools parser serves:

- **Envoy** ``http_service``: Envoy sends the client's method and path as the request line and the headers its
  ``allowed_headers`` let through. The answer is ``200`` with the identity headers to set (Envoy copies those
  matching ``allowed_upstream_headers`` onto the upstream request, overwriting) and
  ``x-envoy-auth-headers-to-remove`` naming the client-sent headers to drop; a denial is its own status, body and
  headers, which Envoy relays to the client (a 5xx becomes Envoy's ``status_on_error``).
- **nginx** ``auth_request``, ingress-nginx and **Traefik** ``forwardAuth``, pointed at ``/forward-auth``: only on
  that path is the original request read from the headers those proxies set, under the trust rules of
  ``sidecar.authz.forwarded`` (all present must agree; ``forward_auth.proxy`` narrows which are read). Anywhere
  else the request line is the original request, so a client cannot spoof ``X-Forwarded-Uri`` through Envoy to
  borrow a public route's decision. There an allow also carries an unchanged ``cookie`` (see
  ``forward_auth_allow``).

HTTP/1.1 with keep-alive; a pipelined request waits for the one before it. A request whose head exceeds
``MAX_REQUEST_BYTES`` gets ``431``, a malformed one ``400``; both close the connection. Nothing here raises into
the event loop.

One connection cannot starve the others or grow without bound: a pipelined burst is parsed ``FEED_BYTES`` at a time
and yields the loop after ``REQUESTS_PER_TURN`` requests; at most ``MAX_IN_FLIGHT`` requests wait for their answer;
reading stops while the client leaves more than ``WRITE_HIGH_WATER`` bytes of answers unread; a connection idle for
``idle_timeout`` is closed; the listener holds at most ``max_connections`` (see ``sidecar.admin.connection_limit``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from typing import cast

import httptools

from sidecar.admin import connection_limit
from sidecar.authz.forwarded import (
    DEFAULT_TRUST,
    FORWARDED_NAMES,
    ForwardedTrust,
    is_forward_auth,
    to_request_view,
)
from sidecar.authz.http_answers import (
    _DENIED,
    BAD_REQUEST,
    BODY_TOO_LARGE,
    HEADERS_TO_REMOVE,
    METADATA_PREFIX,
    TOO_LARGE,
    UNREADABLE,
    UnsafeHeader,
    allow_response,
    deny_response,
    encode,
)
from sidecar.authz.service import AuthzService, Pending
from sidecar.core.decision import COOKIE_HEADER, Allow, Decision
from sidecar.core.request import RequestView

log = logging.getLogger("sidecar.authz")

MAX_REQUEST_BYTES = 64 * 1024  # request line + headers + body of one request
MAX_HEADER_LINES = 1024
HEADER_TIMEOUT_SECONDS = 10.0  # a request begun must be complete within this
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
REFUSAL_WARNING_INTERVAL = 60.0  # a flood over max_connections is logged once a minute, with a count


def _name_table(names: tuple[str, ...]) -> dict[bytes, str]:
    """Header names as Envoy, nginx and Traefik spell them → lower case, so the common ones cost no decode."""
    return {form.encode(): name for name in names for form in (name, name.title(), name.upper())}


_NAMES = _name_table(
    (
        *sorted(FORWARDED_NAMES),
        "host",
        "x-forwarded-for",
        "accept",
        "authorization",
        "content-length",
        "cookie",
        "sec-fetch-mode",
        "user-agent",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-internal",
        "x-real-ip",
        "x-request-id",
    )
)


# --------------------------------------------------------------------------------------------------- request


def forward_auth_allow(allow: Allow, request: RequestView) -> Allow:
    """An allow as nginx and Traefik need it: with the Cookie header the upstream should get, even when unchanged.

    Envoy keeps a Cookie header the answer does not mention. The forward-auth proxies, told to take Cookie from
    the answer (Traefik ``authResponseHeaders: [Cookie]``, nginx ``auth_request_set … $upstream_http_cookie``),
    would drop it instead, so an untouched Cookie is echoed; a rewritten or removed one is already in the answer.
    """
    if COOKIE_HEADER in allow.headers_to_remove or any(name == COOKIE_HEADER for name, _ in allow.headers_to_set):
        return allow
    lines = request.values(COOKIE_HEADER)
    if not lines:
        return allow
    return dataclasses.replace(allow, headers_to_set=(*allow.headers_to_set, (COOKIE_HEADER, "; ".join(lines))))


# --------------------------------------------------------------------------------------------------- protocol


class _TooLarge(Exception):
    """The request being read is over a size bound (answered 431 or 413)."""


class HttpAuthzProtocol(asyncio.Protocol):
    """One client connection: parse, ask the service, answer in order."""

    def __init__(self, service: AuthzService, server: HttpAuthzServer) -> None:
        self._service = service
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._size = 0  # bytes of the request being read
        self._in_message = False
        self._headers_done = False
        self._completed = 0  # requests read so far: the turn budget counts these
        # Input read from the socket and not parsed yet: the rest of a pipelined burst, fed on later turns.
        self._inbox = b""
        self._offset = 0
        self._turn: asyncio.Handle | None = None  # the scheduled feeding of the rest of _inbox
        self._reading = True
        self._writable = True  # False between the transport's pause_writing and resume_writing
        self._writable_again: asyncio.Future[None] | None = None
        # (request, or its begun check; keep-alive; HEAD; on /forward-auth) of each request read and not yet answered
        self._queue: collections.deque[tuple[RequestView | Pending, bool, bool, bool]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_active = 0.0  # loop time of the last bytes read or answer written
        self._draining = False  # the server is stopping: close after the answer in flight
        self._peer = ""

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._server.opened(self):
            self._transport.close()  # over max_connections: refused at once, so it holds no descriptor
            return
        self._transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._last_active = self._loop.time()
        self._idle_timer = self._loop.call_later(self._server.idle_timeout, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.closed(self)
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
        else:
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
            transport is not None and not transport.is_closing() and self._writable and len(self._queue) < MAX_IN_FLIGHT
        )

    def _feed(self) -> None:
        """Parse buffered input until it runs out, this turn's budget is spent, or the connection must wait."""
        self._turn = None
        data, offset = self._inbox, self._offset
        end = len(data)
        budget = self._completed + REQUESTS_PER_TURN
        chunks: memoryview | None = None  # a burst is fed as views, never copied; the common small read whole
        try:
            while offset < end and self._completed < budget and self._may_parse():
                room = MAX_REQUEST_BYTES - self._size
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
        except _TooLarge:
            self._fail(BODY_TOO_LARGE if self._headers_done else TOO_LARGE)
            return
        except httptools.HttpParserCallbackError as exc:
            self._fail(TOO_LARGE if isinstance(exc.__context__, _TooLarge) else BAD_REQUEST)
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # malformed, or Upgrade / CONNECT
            self._fail(BAD_REQUEST)
            return
        except Exception:  # never a traceback into the event loop
            log.exception("HTTP ext_authz: unexpected error reading a request")
            self._fail(BAD_REQUEST)
            return
        finally:
            if chunks is not None:
                chunks.release()
        if offset < end:
            self._offset = offset
        else:
            self._inbox, self._offset = b"", 0
        if self._in_message and self._timer is None:
            self._timer = self._loop.call_later(HEADER_TIMEOUT_SECONDS, self._timed_out)
        self._flow()

    def _flow(self) -> None:
        """Read while there is room to: no input left unparsed, answers drained, few requests in flight."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        backlog = self._offset < len(self._inbox)
        if backlog and self._turn is None and self._may_parse():
            self._turn = self._loop.call_soon(self._feed)  # the rest after the other connections' turn
        self._set_reading(not backlog and self._writable and len(self._queue) < MAX_IN_FLIGHT)

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
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
        self._headers.append((key, value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if len(self._headers) > MAX_HEADER_LINES:  # their bytes are bounded already; their count here
            raise _TooLarge

    def on_message_complete(self) -> None:
        self._in_message = False
        self._size = 0
        self._completed += 1
        self._cancel_timer()
        parser = self._parser
        method = parser.get_method().decode("latin-1")
        target = self._url.decode("latin-1")
        trust = self._server.forwarded
        view = to_request_view(method, target, tuple(self._headers), self._peer, trust)
        keep_alive, head_only, forward = parser.should_keep_alive(), method == "HEAD", is_forward_auth(target, trust)
        # An Upgrade or CONNECT request completes here and then fails the parser (a 400): never answer it first.
        waiting: RequestView | Pending = view
        if self._task is None and not self._queue and self._writable and not parser.should_upgrade():
            step = self._service.begin(view)
            if not isinstance(step, Pending):  # no I/O needed: answer now, without a task
                self._respond(view, keep_alive, head_only, forward, step)
                return
            waiting = step
        self._queue.append((waiting, keep_alive, head_only, forward))
        if self._task is None:
            self._task = self._loop.create_task(self._answer())

    # --- answering

    def _respond(self, view: RequestView, keep_alive: bool, head_only: bool, forward: bool, decision: Decision) -> bool:
        """Write the answer; True when the connection is done (closed or gone)."""
        try:
            if forward and isinstance(decision, Allow):
                decision = forward_auth_allow(decision, view)
            close = not keep_alive or self._draining
            response = encode(decision, close=close, head_only=head_only)
        except Exception:  # check never raises; belt and braces for the encoding
            log.exception("HTTP ext_authz: unexpected error answering a request")
            close, response = True, UNREADABLE
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
        queue = self._queue
        while queue:
            if not self._writable:  # the client has not read the answers before: wait for it before deciding
                self._writable_again = self._loop.create_future()
                await self._writable_again
            waiting, keep_alive, head_only, forward = queue.popleft()
            # A pipelined request is begun only now, in turn, so it is decided as of its answer.
            view = waiting.request if isinstance(waiting, Pending) else waiting
            step = waiting if isinstance(waiting, Pending) else self._service.begin(view)
            decision = await self._service.finish(step) if isinstance(step, Pending) else step
            if self._respond(view, keep_alive, head_only, forward, decision):
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
        if self._task is not None:
            self._task.cancel()
            self._task = None
        transport.write(response)
        transport.close()

    def _timed_out(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.close()

    def _idle_check(self) -> None:
        """Close a connection that neither sent a byte nor got an answer for ``idle_timeout``; Envoy reconnects."""
        self._idle_timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        idle_timeout = self._server.idle_timeout
        left = self._last_active + idle_timeout - self._loop.time()
        if left <= 0 and self._task is not None and self._writable:
            left = idle_timeout  # a Check waits on the store, which its deadline bounds
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
        """The server is stopping: close now when idle, else after the answer in flight."""
        self._draining = True
        if self._task is None and not self._in_message and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class HttpAuthzServer:
    """The ``listen.http`` listener."""

    def __init__(
        self,
        service: AuthzService,
        *,
        forwarded: ForwardedTrust = DEFAULT_TRUST,
        idle_timeout: float = 60.0,
        max_connections: int = 1000,
    ) -> None:
        self._service = service
        self.forwarded = forwarded  # forward_auth.*: which headers name the original request, which XFF hops count
        self.idle_timeout = idle_timeout  # listen.idle_timeout
        self.max_connections = max_connections  # listen.max_connections (start() lowers it to the descriptor share)
        self._server: asyncio.Server | None = None
        self._connections: set[HttpAuthzProtocol] = set()
        self._refused = 0  # connections refused since the last warning
        self._warned_at: float | None = None
        self._drained: asyncio.Event | None = None  # set when the last connection closes during stop()

    async def start(self, host: str, port: int) -> None:
        self.max_connections = connection_limit(self.max_connections)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpAuthzProtocol(self._service, self), host, port, backlog=1024
        )

    def opened(self, connection: HttpAuthzProtocol) -> bool:
        """Count a new connection in; False when the listener is full and it must be closed at once."""
        if len(self._connections) >= self.max_connections:
            self._refused += 1
            now = asyncio.get_running_loop().time()
            if self._warned_at is None or now - self._warned_at >= REFUSAL_WARNING_INTERVAL:
                log.warning(
                    "listen.http: %d connections open, the most allowed (listen.max_connections, at most a share of "
                    "the open-files limit); refused %d new ones",
                    len(self._connections),
                    self._refused,
                )
                self._warned_at, self._refused = now, 0
            return False
        self._connections.add(connection)
        return True

    def closed(self, connection: HttpAuthzProtocol) -> None:
        self._connections.discard(connection)
        if not self._connections and self._drained is not None:
            self._drained.set()

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) of the first socket (the port picked for port 0)."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let answers in flight finish for up to ``grace`` seconds, then drop the rest."""
        if self._server is None:
            return
        self._server.close()
        self._drained = asyncio.Event()
        for connection in list(self._connections):
            connection.shutdown()
        if self._connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        for connection in list(self._connections):
            connection.abort()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None


# The answer encoding lives in sidecar.authz.http_answers; these names stay reachable here for callers of this module.
__all__ = [
    "BAD_REQUEST",
    "BODY_TOO_LARGE",
    "HEADERS_TO_REMOVE",
    "METADATA_PREFIX",
    "TOO_LARGE",
    "UNREADABLE",
    "_DENIED",
    "HttpAuthzProtocol",
    "HttpAuthzServer",
    "UnsafeHeader",
    "allow_response",
    "deny_response",
    "encode",
    "forward_auth_allow",
    "to_request_view",
]
