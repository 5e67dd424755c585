"""The admin responder: health and readiness answers, and refusals for anything else."""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from collections.abc import Callable

import pytest

from sidecar.admin import DESCRIPTOR_SHARE, AdminServer, answer, connection_limit, raise_open_files_limit


def status_of(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize(
    ("line", "ready", "status"),
    [
        (b"GET /healthz HTTP/1.1", False, "HTTP/1.1 200 OK"),
        (b"GET /readyz HTTP/1.1", True, "HTTP/1.1 200 OK"),
        (b"GET /readyz HTTP/1.1", False, "HTTP/1.1 503 Service Unavailable"),
        (b"GET /readyz?verbose=1 HTTP/1.0", True, "HTTP/1.1 200 OK"),
        (b"HEAD /healthz HTTP/1.1", True, "HTTP/1.1 200 OK"),
        (b"GET /nope HTTP/1.1", True, "HTTP/1.1 404 Not Found"),
        (b"POST /healthz HTTP/1.1", True, "HTTP/1.1 405 Method Not Allowed"),
        (b"garbage", True, "HTTP/1.1 400 Bad Request"),
        (b"GET /healthz SPDY/3", True, "HTTP/1.1 400 Bad Request"),
        (b"\xff\xfe /healthz HTTP/1.1", True, "HTTP/1.1 405 Method Not Allowed"),
    ],
)
def test_answers(line: bytes, ready: bool, status: str) -> None:
    assert status_of(answer(line, lambda: ready)) == status


def test_head_has_no_body_but_the_same_length_header() -> None:
    get, head = answer(b"GET /healthz HTTP/1.1", lambda: True), answer(b"HEAD /healthz HTTP/1.1", lambda: True)
    assert get.startswith(head) and get.endswith(b"ok\n") and head.endswith(b"\r\n\r\n")


def test_metrics_are_served_in_the_prometheus_text_format() -> None:
    response = answer(b"GET /metrics HTTP/1.1", lambda: True, metrics=lambda: b"sidecar_up 1\n")
    assert status_of(response) == "HTTP/1.1 200 OK"
    assert b"content-type: text/plain; version=0.0.4; charset=utf-8" in response
    assert response.endswith(b"\r\n\r\nsidecar_up 1\n")


def test_jwks_is_served_as_cacheable_json_only_when_assertions_are_on() -> None:
    jwks = b'{"keys":[]}'
    response = answer(b"GET /.well-known/jwks.json HTTP/1.1", lambda: True, jwks=lambda: jwks)
    assert status_of(response) == "HTTP/1.1 200 OK"
    assert b"content-type: application/json" in response and b"cache-control: public, max-age=300" in response
    assert response.endswith(jwks)
    assert status_of(answer(b"GET /.well-known/jwks.json HTTP/1.1", lambda: True)) == "HTTP/1.1 404 Not Found"


def test_metrics_are_404_where_the_listener_has_none() -> None:
    assert status_of(answer(b"GET /metrics HTTP/1.1", lambda: True)) == "HTTP/1.1 404 Not Found"


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


def test_the_connection_limit_is_a_share_of_the_open_files_limit_and_the_soft_limit_can_be_raised() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 512:
        pytest.skip("the hard open-files limit is too low to lower and raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert connection_limit(1000) == 256 // DESCRIPTOR_SHARE
        assert connection_limit(10) == 10
        before, after = raise_open_files_limit()
        assert before == 256
        assert after == (None if hard == resource.RLIM_INFINITY else hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
