"""The admin responder: health and readiness answers, and refusals for anything else."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sidecar.admin import AdminServer, answer


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
