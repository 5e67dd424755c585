"""The admin responder: health and readiness answers, and refusals for anything else."""

from __future__ import annotations

import pytest

from sidecar.admin import answer


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
