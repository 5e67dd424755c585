"""One HTTP/1.1 connection (``httpserver.protocol``), through the ext_authz listener on a loopback port: keep-alive,
pipelining, HEAD, malformed and oversized requests, and the bounds that keep one connection from starving the
others or growing without bound."""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import dataclasses
import logging
import socket
import threading
import time

import pytest

from sidecar.authz import http
from sidecar.core.request import RequestView
from sidecar.httpserver import protocol as http_protocol
from sidecar.httpserver.handler import Handler, Limits, Refusals
from sidecar.httpserver.listener import HttpListener
from tests.support.edge import SETTINGS
from tests.support.http_wire import Problems, Served, closed, read_response, request, serving


async def test_keep_alive_answers_several_requests_on_one_connection(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        for path in ("/public/a", "/hello", "/public/b"):
            writer.write(request(path))
            response = await read_response(reader)
            assert response.status == (401 if path == "/hello" else 200)
            assert response.header("connection") is None
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(request("/hello") + request("/public/x") + request("/hello", ("Connection", "close")))
        statuses = [(await read_response(reader)).status for _ in range(3)]
        assert statuses == [401, 200, 401]
        assert await closed(reader)
    finally:
        writer.close()


async def test_http_1_0_and_connection_close_are_answered_then_closed(served: Served) -> None:
    for raw in (request("/public/x", version="1.0"), request("/public/x", ("Connection", "close"))):
        reader, writer = await served.connect()
        writer.write(raw)
        response = await read_response(reader)
        assert (response.status, response.header("connection")) == (200, "close")
        assert await closed(reader)
        writer.close()


async def test_head_gets_no_body(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(request("/hello", method="HEAD") + request("/public/x"))
        head = await read_response(reader, head_only=True)
        assert head.status == 401 and head.header("content-length") == "0"
        assert (await read_response(reader)).status == 200  # the next answer starts right after the head
    finally:
        writer.close()


async def test_a_request_split_across_writes_is_read_whole(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        raw = request("/public/x", ("x-user-id", "evil"))
        for i in range(0, len(raw), 7):
            writer.write(raw[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        response = await read_response(reader)
        assert response.status == 200 and response.header(http.HEADERS_TO_REMOVE).startswith("x-user-id,")
    finally:
        writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="no-request-line"),
        pytest.param(b"GET / HTTP/1.1\r\nbad header\r\n\r\n", id="header-without-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nx: a\rb\r\n\r\n", id="bare-cr"),
        pytest.param(b"GET /\x00 HTTP/1.1\r\n\r\n", id="nul-in-target"),
        pytest.param(b"GET / HTTP/9.9\r\n\r\n", id="bad-version"),
        pytest.param(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"),
        pytest.param(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com\r\n\r\n", id="connect"),
        pytest.param(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", id="upgrade"),
    ],
)
async def test_malformed_request_is_400_and_closed(served: Served, raw: bytes) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(raw)
        response = await read_response(reader)
        assert (response.status, response.header("connection")) == (400, "close")
        assert await closed(reader)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(request("/", ("x-big", "a" * (70 * 1024))), id="one-huge-header"),
        pytest.param(request("/", *[(f"x-h{i}", "v" * 100) for i in range(800)]), id="many-headers"),
        pytest.param(request("/", *[("x", "") for _ in range(1100)]), id="too-many-header-lines"),
        pytest.param(request("/" + "a" * (70 * 1024)), id="huge-target"),
    ],
)
async def test_oversized_request_head_is_431_and_closed(served: Served, raw: bytes) -> None:
    reader, writer = await served.connect()
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(raw)
            await writer.drain()
        response = await read_response(reader)
        assert (response.status, response.header("connection")) == (431, "close")
        assert await closed(reader)
    finally:
        writer.close()


async def test_oversized_body_is_413(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(request("/", ("content-length", str(100 * 1024)), method="POST") + b"x" * (100 * 1024))
            await writer.drain()
        assert (await read_response(reader)).status == 413
    finally:
        writer.close()


async def test_small_request_body_is_read_and_ignored(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(request("/public/x", ("content-length", "5"), method="POST") + b"hello" + request("/hello"))
        assert (await read_response(reader)).status == 200
        assert (await read_response(reader)).status == 401
    finally:
        writer.close()


async def test_a_request_left_unfinished_is_dropped(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served.server, "limits", dataclasses.replace(served.server.limits, request_timeout=0.1))
    reader, writer = await served.connect()
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n")
        assert await closed(reader)
    finally:
        writer.close()


async def test_client_disconnecting_mid_check_is_quiet(served: Served) -> None:
    issued = await served.manager.create("alice")
    original = served.store.resolve

    async def resolve(*args: object) -> object:
        await asyncio.sleep(0.05)
        return await original(*args)  # type: ignore[arg-type]

    served.store.resolve = resolve  # type: ignore[method-assign]
    _, writer = await served.connect()
    writer.write(request("/hello", ("cookie", f"SESSION={issued.token}")))
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.2)
    assert (await served.ask("/public/x")).status == 200


def head_count(data: bytes) -> int:
    """Answers in a stream of bodiless responses (each head ends with an empty line)."""
    return data.count(b"\r\n\r\n")


def drain_answers(sock: socket.socket, answers: int) -> int:
    """Read bodiless answers until ``answers`` arrived or the socket stops; returns how many arrived."""
    received = b""
    with contextlib.suppress(OSError):
        while head_count(received) < answers:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            received += chunk
    return head_count(received)


async def test_a_5000_request_pipelined_flood_leaves_another_client_answered_within_200_ms(served: Served) -> None:
    flood = request("/public/flood") * 5000

    def clients() -> tuple[float, int]:
        with (
            socket.create_connection(("127.0.0.1", served.port), timeout=20) as flooder,
            socket.create_connection(("127.0.0.1", served.port), timeout=20) as prober,
        ):
            answered: list[int] = []
            reader = threading.Thread(target=lambda: answered.append(drain_answers(flooder, 5000)))
            reader.start()
            flooder.sendall(flood)
            started = time.monotonic()
            prober.sendall(request("/public/probe"))
            answer = prober.recv(4096)
            latency = time.monotonic() - started
            reader.join(20)
            assert answer.startswith(b"HTTP/1.1 200 ")
            return latency, answered[0] if answered else 0

    latency, answered = await asyncio.to_thread(clients)
    assert answered == 5000  # every request of the flood is answered, in turn
    assert latency < 0.2, f"the other client waited {latency * 1000:.0f} ms for its answer"


async def test_pipelined_requests_waiting_for_the_store_are_read_only_a_few_ahead_of_their_answers(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = await served.manager.create("alice")
    parsed = 0
    handler = served.server.handler
    read_view = handler.read

    def counted(*args: object) -> RequestView:
        nonlocal parsed
        parsed += 1
        return read_view(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(served.server, "handler", dataclasses.replace(handler, read=counted))
    original = served.store.resolve

    async def resolve(*args: object) -> object:
        await asyncio.sleep(0.001)
        return await original(*args)  # type: ignore[arg-type]

    served.store.resolve = resolve  # type: ignore[method-assign]
    reader, writer = await served.connect()
    try:
        writer.write(request("/hello", ("cookie", f"SESSION={issued.token}")) * 300)
        ahead = []
        for answered in range(1, 301):
            assert (await read_response(reader)).status == 200
            ahead.append(parsed - answered)
    finally:
        writer.close()
    bound = http_protocol.MAX_IN_FLIGHT + http_protocol.FEED_BYTES // 18
    assert max(ahead) <= bound, f"up to {max(ahead)} requests read and unanswered (bound {bound})"


async def test_a_client_that_does_not_read_its_answers_is_not_read_either_until_it_does(
    problems: Problems, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dataclasses.replace(SETTINGS, login_url="https://login.example.com/start")
    answered = 0
    encoded = http.encode

    def counted(*args: object, **kwargs: bool) -> bytes:
        nonlocal answered
        answered += 1
        return encoded(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(http, "encode", counted)
    # A browser navigation to a 60 KB path gets a 302 whose Location carries it: 200 of them are ~12 MB of answers.
    navigation = request("/" + "p" * 60_000, ("accept", "text/html"))
    async with serving(problems, settings) as running:
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room for answers in the kernel
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", running.port))
        sender = asyncio.create_task(loop.sock_sendall(client, navigation * 200))
        try:
            settled, deadline = -1, time.monotonic() + 5
            while answered != settled and time.monotonic() < deadline:  # until the sidecar stops answering
                settled = answered
                await asyncio.sleep(0.5)
            # The kernel's send buffer (up to 4 MB here) takes some answers; the rest wait unread and unanswered.
            assert answered < 120, f"{answered} answers of ~60 KB buffered for a client that reads none"
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            marker, tail, seen = b"HTTP/1.1 302 ", b"", 0
            async with asyncio.timeout(20):
                while seen < 200:  # once it reads, it is read and answered again
                    chunk = await loop.sock_recv(client, 1 << 20)
                    assert chunk, f"closed after {seen} answers"
                    window = tail + chunk
                    seen += window.count(marker)
                    tail = window[-(len(marker) - 1) :]  # a marker split across reads is counted once
                await sender
        finally:
            sender.cancel()
            client.close()


async def test_a_keep_alive_connection_idle_for_idle_timeout_is_closed_and_an_active_one_is_not(
    problems: Problems,
) -> None:
    async with serving(problems, idle_timeout=0.3) as running:
        idle_reader, idle_writer = await running.connect()
        busy_reader, busy_writer = await running.connect()
        idle_writer.write(request("/public/x"))
        assert (await read_response(idle_reader)).status == 200
        started = time.monotonic()
        for _ in range(8):  # 0.8 s of a request every 0.1 s
            busy_writer.write(request("/public/x"))
            assert (await read_response(busy_reader)).status == 200
            await asyncio.sleep(0.1)
        assert await closed(idle_reader)
        assert time.monotonic() - started < 2.0
        busy_writer.write(request("/public/x"))
        assert (await read_response(busy_reader)).status == 200
        for writer in (idle_writer, busy_writer):
            writer.close()


async def test_a_client_that_stops_reading_is_dropped_after_idle_timeout(problems: Problems) -> None:
    settings = dataclasses.replace(SETTINGS, login_url="https://login.example.com/start")
    navigation = request("/" + "p" * 60_000, ("accept", "text/html"))
    async with serving(problems, settings, idle_timeout=0.5) as running:
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", running.port))
        sender = asyncio.create_task(loop.sock_sendall(client, navigation * 100))
        try:
            deadline = time.monotonic() + 5
            while not running.server.connections:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            while running.server.connections:
                assert time.monotonic() < deadline, "a client that reads nothing is held open"
                await asyncio.sleep(0.05)
        finally:
            sender.cancel()
            client.close()


async def test_requests_pipelined_after_one_that_closes_are_not_answered(served: Served) -> None:
    reader, writer = await served.connect()
    try:
        writer.write(request("/public/a", ("Connection", "close")) + request("/public/b") + request("/hello"))
        first = await read_response(reader)
        assert (first.status, first.header("connection")) == (200, "close")
        assert await closed(reader)  # nothing after the closing answer
    finally:
        writer.close()


class _Never:
    """No answer here needs I/O."""


async def _never(work: _Never) -> bytes:
    raise AssertionError("begin never waits")


async def test_a_closing_answer_left_unread_is_dropped_after_idle_timeout() -> None:
    body = b"x" * (32 << 20)  # more than the sockets' buffers hold
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
    refused = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    handler: Handler[bytes, _Never, bytes] = Handler(
        read=lambda method, target, headers, peer: target,
        begin=lambda target: answer,
        finish=_never,
        encode=lambda request, target, response, close, head: response,
        waits=_Never,
        refusals=Refusals(refused, refused, refused, refused),
    )
    limits = Limits(max_request_bytes=1024, max_header_lines=16, request_timeout=5, idle_timeout=0.5, max_connections=4)
    listener = HttpListener(handler, limits, name="test", log=logging.getLogger("test"))
    await listener.start("127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection(*listener.address)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")  # answered, then closed: but the answer is never read
        deadline = time.monotonic() + 5
        while not listener.connections:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        while listener.connections:
            assert time.monotonic() < deadline, "a closing answer nobody reads holds its connection forever"
            await asyncio.sleep(0.05)
        writer.close()
    finally:
        await listener.stop()


async def test_header_names_reach_the_handler_lower_cased_and_values_byte_exact(served: Served) -> None:
    handler = served.server.handler
    seen: list[list[tuple[str, str]]] = []

    def read(method: bytes, target: bytes, headers: list[tuple[str, str]], peer: str) -> RequestView:
        seen.append(list(headers))
        return handler.read(method, target, headers, peer)

    served.server.handler = dataclasses.replace(handler, read=read)
    raw = b"GET /public/x HTTP/1.1\r\nHOST: a\r\nX-Odd-NAME: caf\xff\r\nCookie: a=1\r\n\r\n"
    reader, writer = await served.connect()
    try:
        writer.write(raw)
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()
    assert seen == [[("host", "a"), ("x-odd-name", "caf\udcff"), ("cookie", "a=1")]]


_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_BODY = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_FAILED = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@contextlib.asynccontextmanager
async def _small_listener() -> collections.abc.AsyncIterator[HttpListener[bytes, _Never, bytes]]:
    """A listener whose bounds are below FEED_BYTES, so a whole request arrives in one read and one parser step."""

    def read_target(method: bytes, target: bytes, headers: list[tuple[str, str]], peer: str) -> bytes:
        if target == b"/fail":
            raise RuntimeError("a handler bug")
        return target

    handler: Handler[bytes, _Never, bytes] = Handler(
        read=read_target,
        begin=lambda target: _OK,
        finish=_never,
        encode=lambda request, target, response, close, head: response,
        waits=_Never,
        refusals=Refusals(_BAD, _LARGE, _BODY, _FAILED),
    )
    limits = Limits(max_request_bytes=200, max_header_lines=4, request_timeout=5, idle_timeout=5, max_connections=4)
    assert limits.max_request_bytes < http_protocol.FEED_BYTES
    listener = HttpListener(handler, limits, name="test", log=logging.getLogger("test"))
    await listener.start("127.0.0.1", 0)
    try:
        yield listener
    finally:
        await listener.stop()


async def _answers(listener: HttpListener[bytes, _Never, bytes], *reads: bytes) -> bytes:
    """All the connection answers to ``reads``, each written (and read by the server) on its own, until it closes."""
    reader, writer = await asyncio.open_connection(*listener.address)
    try:
        for data in reads:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.05)  # one read each on the server's side
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def _sized(size: int, *headers: bytes) -> bytes:
    """A request of exactly ``size`` bytes with ``headers`` (lines, without CRLF) before its padding header."""
    head = b"GET / HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in headers) + b"x: "
    return head + b"p" * (size - len(head) - 4) + b"\r\n\r\n"


async def test_one_read_holding_a_whole_request_is_held_to_the_same_bounds(problems: Problems) -> None:
    async with _small_listener() as listener:
        assert await _answers(listener, _sized(200)) == _OK  # exactly max_request_bytes
        assert await _answers(listener, _sized(201)) == _LARGE
        assert await _answers(listener, _sized(100) + _sized(100)) == _OK * 2  # each request counted on its own
        assert await _answers(listener, _sized(120, b"a: 1", b"b: 2", b"c: 3")) == _OK  # 4 header lines
        assert await _answers(listener, _sized(120, b"a: 1", b"b: 2", b"c: 3", b"d: 4")) == _LARGE
        post = b"POST / HTTP/1.1\r\ncontent-length: 170\r\n\r\n"
        assert await _answers(listener, post + b"b" * 170) == _BODY  # the head was read: its body is too large
        assert await _answers(listener, b"GET / HTTP/1.1\r\nbad header\r\n\r\n") == _BAD
        assert await _answers(listener, b"GET /fail HTTP/1.1\r\n\r\n") == _BAD  # a handler bug reading it
    assert problems.seen == [], "a read refused is answered and closed, never an error of the loop"


async def test_a_request_read_in_parts_counts_every_part_against_the_size_bound() -> None:
    async with _small_listener() as listener:
        request = _sized(200)
        assert await _answers(listener, request[:150], request[150:]) == _OK
        too_large = _sized(250)
        assert await _answers(listener, too_large[:150], too_large[150:]) == _LARGE
