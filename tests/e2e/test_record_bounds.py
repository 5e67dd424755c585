"""A planted oversized session record through a real Envoy, sidecar and Valkey (issue #11).

Someone with write access to Redis replaced a session's value with a 3 MB record of 200,000 attributes. Decoding
it blocked the sidecar's event loop for most of a second on every request with that token (a refused record is not
cached), so Envoy's 0.25 s ext_authz timeout turned other clients' requests, public routes included, into 503s.
The record must be refused by its size before it is decoded, and the refusal remembered: the first decision asks
the store for the value's length only (the value never leaves Redis) and takes under 10 ms; every later one takes
under 5 ms (as the sidecar measured it: the decision log's duration_ms). Public routes and other sessions keep
answering meanwhile.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sidecar.core.tokens import session_key
from tests.support import processes, servers

pytestmark = pytest.mark.e2e

PLANTED_ATTRIBUTES = 200_000
PLANTED_REQUESTS = 40
DECISION_BOUND_MS = 5.0  # issue #11
# The first decision is one store round trip that compares the value's length with the bound (HSTRLEN) and
# transfers nothing; it took 22 ms when the 2.8 MB value was read before being refused, 1.9 ms since.
FIRST_DECISION_BOUND_MS = 10.0
ENVOY_AUTHZ_TIMEOUT = 0.25  # mesh-config/envoy: past it Envoy answers 503 without the sidecar's word


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[servers.Stack, int]]:
    workdir: Path = tmp_path_factory.mktemp("bounds")
    admin_port = processes.free_port()
    stack = servers.start_stack(workdir, extra_config={"listen": {"admin": f"127.0.0.1:{admin_port}"}}, name="bounds")
    try:
        processes.wait_for_port("127.0.0.1", admin_port, 10.0)
        yield stack, admin_port
    finally:
        stack.close()


def plant(stack: servers.Stack, token: str, attributes: int) -> int:
    """Replace the stored value of ``token``'s session with the same identity plus ``attributes`` attributes (the
    default config stores plain JSON, so a store writer needs no key); the planted value's size."""
    key = session_key(token)
    name = f"sidecar:{{{key.tag}}}:s:{key.digest}"
    client = redis.Redis.from_url(stack.valkey.url)
    try:
        stored = client.hget(name, "d")
        assert isinstance(stored, bytes) and stored.startswith(b"p1.")
        record = json.loads(stored[3:])
        record["attrs"] = {f"a{i:06d}": "v" for i in range(attributes)}
        value = b"p1." + json.dumps(record, separators=(",", ":")).encode()
        client.hset(name, "d", value)
    finally:
        client.close()
    return len(value)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        found = re.fullmatch(r"([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)", line)
        if found is None or found.group(1) != name:
            continue
        if dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or "")) == labels:
            return float(found.group(3))
    return 0.0


def decision_lines(stack: servers.Stack) -> list[dict[str, Any]]:
    log = next(server.log for server in stack.servers if server.name == "sidecar")
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "sidecar.decision":
                lines.append(entry)
    return lines


class Background(threading.Thread):
    """Other clients meanwhile: a public route and a healthy session, round and round, each timed."""

    def __init__(self, base_url: str, cookie: str) -> None:
        super().__init__(daemon=True)
        self.base_url, self.cookie = base_url, cookie
        self.stop = threading.Event()
        self.answers: list[tuple[str, int, float]] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, trust_env=False, timeout=10.0) as client:
            while not self.stop.is_set():
                for path, headers in (("/public/ping", {}), ("/app/mine", {"cookie": self.cookie})):
                    started = time.perf_counter()
                    status = client.get(path, headers=headers).status_code
                    self.answers.append((path, status, time.perf_counter() - started))


def test_a_planted_oversized_record_is_denied_in_under_5ms_and_public_routes_are_unaffected(
    bounded: tuple[servers.Stack, int],
) -> None:
    stack, admin_port = bounded
    victim = stack.create_session("mallory", roles=("dev",))["token"]
    alice = stack.create_session("alice", roles=("dev",))["token"]
    size = plant(stack, victim, PLANTED_ATTRIBUTES)
    assert size > 2_500_000
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        metrics_url = f"http://127.0.0.1:{admin_port}/metrics"
        before = client.get(metrics_url).text
        others = Background(stack.base_url, f"SESSION={alice}")
        others.start()
        started = time.monotonic()
        try:
            while len(others.answers) < 10:  # the other clients are under way before the planted token arrives
                time.sleep(0.01)
            planted = [
                client.get(stack.url(f"/app/planted/{n}"), headers={"cookie": f"SESSION={victim}"}).status_code
                for n in range(PLANTED_REQUESTS)
            ]
            mark = len(others.answers)
            while len(others.answers) < mark + 10:  # and keep going after it
                time.sleep(0.01)
        finally:
            others.stop.set()
            others.join(timeout=10)
        elapsed = time.monotonic() - started
        after = client.get(metrics_url).text

    assert planted == [401] * PLANTED_REQUESTS  # the sidecar's own denial: never a 503, never an allow

    def settled() -> list[dict[str, Any]]:
        return [x for x in decision_lines(stack) if x["path"].startswith("/app/planted/")]

    deadline = time.monotonic() + 5
    while len(settled()) < PLANTED_REQUESTS and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = settled()
    assert len(lines) == PLANTED_REQUESTS
    assert {(x["status"], x["reason"], x["invalid_token"]) for x in lines} == {
        (401, "session_record_too_large", "unknown")
    }
    first, *repeated = [x["duration_ms"] for x in lines]
    print(f"planted record of {size} bytes: first decision {first} ms (its length only), then max"
          f" {max(repeated)} ms, median {sorted(repeated)[len(repeated) // 2]} ms")  # fmt: skip
    # The first decision asks the store for the value's length and is refused unread; every later one is answered
    # from the refusal memo without a store read.
    assert first < FIRST_DECISION_BOUND_MS
    assert max(repeated) < DECISION_BOUND_MS, repeated

    denied = {"outcome": "deny", "status": "401", "reason": "session_record_too_large"}
    grew = sample(after, "sidecar_decisions_total", **denied) - sample(before, "sidecar_decisions_total", **denied)
    assert grew == PLANTED_REQUESTS
    corrupt = {"operation": "resolve", "error": "corrupt"}
    reads = sample(after, "sidecar_store_errors_total", **corrupt) - sample(
        before, "sidecar_store_errors_total", **corrupt
    )
    assert 1 <= reads <= math.ceil(elapsed / 5) + 1  # the refusal is remembered: one read per few seconds at most

    statuses = {(path, status) for path, status, _ in others.answers}
    assert statuses == {("/public/ping", 200), ("/app/mine", 200)}, statuses
    slowest = max(seconds for _, _, seconds in others.answers)
    assert slowest < ENVOY_AUTHZ_TIMEOUT, slowest
