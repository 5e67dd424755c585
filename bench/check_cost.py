"""What observability and assertions add to one Check, in process (no gRPC, no Envoy): µs per decision.

The same AuthzService is built five ways and each is run over the same requests, interleaved round by round so
machine noise hits all alike; the report gives the median per-call cost of each and its ratio to the bare one:

- **bare**: no observer, no assertions (what issue #5 measured);
- **metrics**: Prometheus counters and the Check histogram (the decision log switched off);
- **metrics + log**: plus the decision log (every denial, 1 % of allows), written to a null stream in JSON;
- **metrics + log + assertion (memo hit)**: plus an ES256 identity assertion, memoized per session;
- **metrics + log + assertion (no memo)**: every allow signs.

Two request kinds: an allowed cache hit (``check_now``: the hot path of a logged-in user) and a denial without
a cookie (every one logged). Writes ``bench/results/check-cost.md``.

    python bench/check_cost.py [--rounds 7] [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from prometheus_client import CollectorRegistry

from sidecar.authz.assertion_issuer import AssertionIssuer
from sidecar.authz.http import HttpAuthzServer
from sidecar.authz.observer import DecisionObserver
from sidecar.authz.service import AuthzService
from sidecar.config import Config
from sidecar.core.abuse import RepeatedInvalidTokens
from sidecar.core.assertion import CLAIM_NAMES, AssertionSettings
from sidecar.core.request import RequestView
from sidecar.core.tokens import KeyRing
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.logs import JsonFormatter
from sidecar.metrics import Metrics
from sidecar.sources.cached import CachedSource
from sidecar.sources.native import NativeSource
from sidecar.store.cache import SessionCache
from sidecar.store.memory import MemoryStore
from sidecar.wiring import edge_settings

RING = KeyRing.of([("k1", b"k" * 32)])
SETTINGS = edge_settings(Config())  # the defaults: cookie SESSION, x-user-* headers, no routes

RESULTS = Path(__file__).resolve().parent / "results" / "check-cost.md"
LOOPBACK = "127.0.0.1"
VARIANTS = (
    "bare",
    "metrics",
    "metrics + log",
    "metrics + log + assertion (memo hit)",
    "metrics + log + assertion (no memo)",
)


def request(cookie: str | None) -> RequestView:
    headers = [("host", "app.example.com"), ("accept", "application/json"), ("user-agent", "bench")]
    if cookie is not None:
        headers.append(("cookie", f"theme=dark; SESSION={cookie}; lang=en"))
    headers.append(("x-user-id", "spoofed"))
    return RequestView("GET", "https", "app.example.com", "/orders/17?x=1", tuple(headers), source="10.1.2.3")


def issuer(memo: bool) -> AssertionIssuer:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    settings = AssertionSettings(
        header="x-user-assertion", issuer="session-sidecar", ttl=60.0, claims=CLAIM_NAMES, audience=""
    )
    return AssertionIssuer(settings, [("k1", "ES256", pem)], cache_size=10_000 if memo else 0)


async def build(variant: str, store: MemoryStore, cache: SessionCache) -> AuthzService:
    observer = None
    if variant != "bare":
        observer = DecisionObserver(
            Metrics(CollectorRegistry()),
            sample_allows=0.01 if "log" in variant else 0.0,
            tracker=RepeatedInvalidTokens(),
        )
    assertions = issuer("no memo" not in variant) if "assertion" in variant else None
    source = CachedSource(NativeSource(store, KeyRingSource(store, RING), SETTINGS.cookie_name), cache=cache)
    return AuthzService(SETTINGS, sources=[source], deadline=0.15, observer=observer, assertions=assertions)


def per_call_us(service: AuthzService, view: RequestView, calls: int) -> float:
    check_now = service.check_now
    start = time.perf_counter_ns()
    for _ in range(calls):
        check_now(view)
    return (time.perf_counter_ns() - start) / calls / 1000


async def live_session() -> tuple[MemoryStore, SessionCache, str]:
    """An in-memory store holding one live session, a live cache in front of it, and the session's token."""
    store = MemoryStore()
    cache = SessionCache(ttl=3600, max_entries=1000, max_bytes=10**7)
    cache.set_live(True)
    manager = SessionManager(
        store, KeyRingSource(store, RING), cookie_name="SESSION", idle_timeout=3600, absolute_timeout=7200
    )
    issued = await manager.create("alice", email="alice@example.com", roles=("admin", "dev"))
    return store, cache, issued.token


async def measure(rounds: int, calls: int) -> dict[tuple[str, str], list[float]]:
    store, cache, token = await live_session()
    services = {variant: await build(variant, store, cache) for variant in VARIANTS}
    allowed, denied = request(token), request(None)
    for service in services.values():
        await service.check(allowed)  # fills the cache (and the assertion memo)
        assert service.check_now(allowed) is not None, "the allowed request must be a cache hit"
    decision_log = logging.getLogger("sidecar.decision")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    decision_log.addHandler(handler)
    decision_log.setLevel(logging.INFO)
    decision_log.propagate = False
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for variant, service in services.items():
            handler.stream = io.StringIO()  # keep memory flat across rounds
            decision_log.disabled = "log" not in variant  # "metrics" alone: counters, no log lines
            samples.setdefault((variant, "allowed (cache hit)"), []).append(per_call_us(service, allowed, calls))
            samples.setdefault((variant, "denied (no cookie)"), []).append(per_call_us(service, denied, calls))
    return samples


async def http_round_trips(rounds: int, calls: int) -> dict[str, list[float]]:
    """µs per request over a real loopback connection to the HTTP adapter: the bare service vs the observed one
    (metrics and decision log), interleaved; an allowed cache hit each time."""
    store, cache, token = await live_session()
    servers: dict[str, HttpAuthzServer] = {}
    for variant in ("bare", "metrics + log"):
        service = await build(variant, store, cache)
        await service.check(request(token))
        server = HttpAuthzServer(service)
        await server.start(LOOPBACK, 0)
        servers[variant] = server
    wire = (
        f"GET /orders/17 HTTP/1.1\r\nHost: app.example.com\r\nCookie: theme=dark; SESSION={token}\r\n"
        "X-Forwarded-For: 10.1.2.3\r\n\r\n"
    ).encode()
    samples: dict[str, list[float]] = {variant: [] for variant in servers}
    try:
        for _ in range(rounds):
            for variant, server in servers.items():
                reader, writer = await asyncio.open_connection(*server.address)
                start = time.perf_counter_ns()
                for _ in range(calls):
                    writer.write(wire)
                    await reader.readuntil(b"\r\n\r\n")
                samples[variant].append((time.perf_counter_ns() - start) / calls / 1000)
                writer.close()
    finally:
        for server in servers.values():
            await server.stop()
    return samples


def report(samples: dict[tuple[str, str], list[float]], rounds: int, calls: int) -> str:
    kinds = ("allowed (cache hit)", "denied (no cookie)")
    lines = [
        "# In-process cost of one Check: observability and assertions",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.python_implementation()} {platform.python_version()} · "
        f"{os.cpu_count()} cores · {rounds} interleaved rounds of {calls:,} calls each (`bench/check_cost.py`).",
        "",
        "µs per call, median of the rounds (ratio to the bare service in brackets):",
        "",
        "| service | " + " | ".join(kinds) + " |",
        "|---|" + "---:|" * len(kinds),
    ]
    for variant in VARIANTS:
        cells = []
        for kind in kinds:
            median = statistics.median(samples[(variant, kind)])
            bare = statistics.median(samples[("bare", kind)])
            cells.append(f"{median:.1f} ({median / bare:.2f}x)")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The allowed request is `check_now` answering from the cache (no I/O); the denial has no cookie, so every "
        "one is logged. The decision log writes JSON to an in-memory stream: the cost is formatting, not disk.",
        "",
    ]
    return "\n".join(lines)


def http_report(samples: dict[str, list[float]], rounds: int, calls: int) -> str:
    bare = statistics.median(samples["bare"])
    lines = [
        "## Through the HTTP adapter",
        "",
        f"One loopback connection, {calls:,} sequential allowed requests (cache hit) per round, {rounds} interleaved "
        "rounds; µs per request round trip (client included), median:",
        "",
        "| service | µs per request |",
        "|---|---:|",
    ]
    for variant, values in samples.items():
        median = statistics.median(values)
        lines.append(f"| {variant} | {median:.1f} ({median / bare:.2f}x) |")
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    samples = asyncio.run(measure(args.rounds, args.calls))
    http_calls = max(args.calls // 5, 100)
    http = asyncio.run(http_round_trips(args.rounds, http_calls))
    text = report(samples, args.rounds, args.calls) + "\n" + http_report(http, args.rounds, http_calls)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
