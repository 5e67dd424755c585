"""The admin responder: health and readiness answers, and refusals for anything else."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import pytest

from sidecar.admin import AdminServer, answer


def status_of(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize(
    ("method", "target", "ready", "status"),
    [
        ("GET", "/healthz", False, "HTTP/1.1 200 OK"),
        ("GET", "/readyz", True, "HTTP/1.1 200 OK"),
        ("GET", "/readyz", False, "HTTP/1.1 503 Service Unavailable"),
        ("GET", "/readyz?verbose=1", True, "HTTP/1.1 200 OK"),
        ("HEAD", "/healthz", True, "HTTP/1.1 200 OK"),
        ("GET", "/nope", True, "HTTP/1.1 404 Not Found"),
        ("POST", "/healthz", True, "HTTP/1.1 405 Method Not Allowed"),
    ],
)
def test_answers(method: str, target: str, ready: bool, status: str) -> None:
    assert status_of(answer(method, target, lambda: ready)) == status


def test_head_has_no_body_but_the_same_length_header() -> None:
    get, head = answer("GET", "/healthz", lambda: True), answer("HEAD", "/healthz", lambda: True)
    assert get.startswith(head) and get.endswith(b"ok\n") and head.endswith(b"\r\n\r\n")


def test_metrics_are_served_in_the_prometheus_text_format() -> None:
    response = answer("GET", "/metrics", lambda: True, metrics=lambda: b"sidecar_up 1\n")
    assert status_of(response) == "HTTP/1.1 200 OK"
    assert b"content-type: text/plain; version=0.0.4; charset=utf-8" in response
    assert response.endswith(b"\r\n\r\nsidecar_up 1\n")


def test_jwks_is_served_as_cacheable_json_only_when_assertions_are_on() -> None:
    jwks = b'{"keys":[]}'
    response = answer("GET", "/.well-known/jwks.json", lambda: True, jwks=lambda: jwks)
    assert status_of(response) == "HTTP/1.1 200 OK"
    assert b"content-type: application/json" in response and b"cache-control: public, max-age=300" in response
    assert response.endswith(jwks)
    assert status_of(answer("GET", "/.well-known/jwks.json", lambda: True)) == "HTTP/1.1 404 Not Found"


def test_metrics_are_404_where_the_listener_has_none() -> None:
    assert status_of(answer("GET", "/metrics", lambda: True)) == "HTTP/1.1 404 Not Found"


async def test_the_admin_server_renders_metrics_off_the_event_loop_and_answers_over_tcp() -> None:
    rendered_in: list[str] = []

    def render() -> bytes:
        rendered_in.append(threading.current_thread().name)
        return b"sidecar_up 1\n"

    server = AdminServer(lambda: True, metrics=render)
    await server.start("127.0.0.1", 0)
    try:
        port = server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        response = await reader.read()
        writer.close()
    finally:
        await server.stop()
    assert response.endswith(b"sidecar_up 1\n")
    assert rendered_in and rendered_in[0] != threading.main_thread().name


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


async def test_a_connection_that_sends_nothing_is_closed_after_idle_timeout() -> None:
    server = AdminServer(lambda: True, idle_timeout=0.3)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert time.monotonic() - started < 2.0  # not the 5 s read timeout
        writer.close()
    finally:
        await server.stop()


async def test_connections_over_max_connections_are_closed_at_once_and_health_answers_when_below() -> None:
    server = AdminServer(lambda: True, max_connections=2)
    await server.start("127.0.0.1", 0)
    try:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        await until(lambda: server.connections == 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 1) == b""  # refused well before the read timeout
        writer.close()
        for _, held_writer in held:
            held_writer.close()
        await until(lambda: server.connections == 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status_of(await asyncio.wait_for(reader.read(), 5)) == "HTTP/1.1 200 OK"
        writer.close()
    finally:
        await server.stop()


async def test_a_client_that_does_not_read_its_metrics_is_dropped_after_idle_timeout() -> None:
    server = AdminServer(lambda: True, metrics=lambda: b"x" * (32 << 20), idle_timeout=0.5)  # more than sockets hold
    await server.start("127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        await until(lambda: server.connections == 1)
        await until(lambda: server.connections == 0)  # the answer sits unread: dropped after idle_timeout
        writer.close()
    finally:
        await server.stop()


async def exchange(server: AdminServer, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"garbage\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"GET /healthz SPDY/3\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"\xff\xfe /healthz HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),  # the parser knows no such method
        (b"BREW /healthz HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (b"DELETE /healthz HTTP/1.1\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
        (b"GET /readyz?verbose=1 HTTP/1.0\r\n\r\n", "HTTP/1.1 200 OK"),
    ],
)
async def test_requests_the_parser_refuses_get_the_admin_answers_and_are_closed(raw: bytes, status: str) -> None:
    server = AdminServer(lambda: True)
    await server.start("127.0.0.1", 0)
    try:
        response = await exchange(server, raw)
    finally:
        await server.stop()
    assert status_of(response) == status and b"connection: close\r\n" in response


async def test_one_request_per_connection_pipelined_ones_after_it_are_not_answered() -> None:
    server = AdminServer(lambda: True)
    await server.start("127.0.0.1", 0)
    try:
        response = await exchange(server, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /nope HTTP/1.1\r\n\r\n")
        head = await exchange(server, b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    finally:
        await server.stop()
    assert response.count(b"HTTP/1.1 ") == 1 and response.endswith(b"\r\n\r\nok\n")
    assert status_of(head) == "HTTP/1.1 200 OK" and b"content-length: 3\r\n" in head and head.endswith(b"\r\n\r\n")


async def test_a_request_head_over_8_kib_is_closed_without_an_answer() -> None:
    server = AdminServer(lambda: True)
    await server.start("127.0.0.1", 0)
    try:
        response = await exchange(server, b"GET /healthz HTTP/1.1\r\nx-big: " + b"a" * 9000 + b"\r\n\r\n")
        assert status_of(await exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n")) == "HTTP/1.1 200 OK"
    finally:
        await server.stop()
    assert response == b""


async def test_a_request_sent_slowly_is_dropped_after_the_read_timeout_even_while_it_sends() -> None:
    server = AdminServer(lambda: True, idle_timeout=0.3)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /healthz HTTP/1.1\r\nhost: x\r\n":  # a byte every 50 ms, never finished
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
                if reader.at_eof():
                    break
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert time.monotonic() - started < 2.0
        writer.close()
    finally:
        await server.stop()
