"""``make bench`` (issues #5, #13, #14): throughput, CPU, latency and Redis cost of each ext_authz path, side by
side, with `wrk`.

One Valkey, one Envoy (1 worker) with one listener per scenario, every listener answering with a
``direct_response`` route so no Python upstream is measured:

- ``alone``       Envoy alone: no ext_authz filter;
- ``grpc_hit``    ext_authz gRPC → sidecar (cache on; the same valid session on every request);
- ``grpc_miss``   ext_authz gRPC → sidecar with ``SIDECAR_CACHE__ENABLED=false`` (one Redis script per request);
- ``naive``       ext_authz gRPC → ``bench/naive_authz.py`` (grpc.aio + one redis.asyncio GET, no core);
- ``const_grpc``  ext_authz gRPC → ``bench/constant_grpc.py`` (sync ``grpc.server``, 4 threads, a constant OK:
                  the gRPC ceiling);
- ``http_hit``    ext_authz ``http_service`` → the sidecar's ``listen.http`` (cache on), when the HTTP mode exists
                  (``sidecar/authz/http.py`` and ``mesh-config/envoy/envoy-http.yaml``);
- ``grpc_hit_unix``, ``http_hit_unix``  the same two over unix sockets (``listen.grpc`` / ``listen.http`` as
                  ``unix:/path``, one sidecar process; Envoy's cluster endpoint a ``pipe``);
- ``const_http``  ext_authz ``http_service`` → ``bench/constant_http.py`` (uvloop + httptools, reads the cookie,
                  a constant 200: the HTTP ceiling);
- ``spring``      ext_authz gRPC → a sidecar with ``sources: [native, spring-session, express]``, a Spring Session
                  hash around real Spring Security bytes (framework sources are read on every request);
- ``express``     the same sidecar, an express-session under ``sess:<id>`` with a signed ``connect.sid``.

The ext_authz filters are copied from ``mesh-config/envoy/envoy.yaml`` (and ``envoy-http.yaml``): only the
cluster ports and the route (``direct_response`` 200) are changed. The filter runs before the router, so a
``direct_response`` route still consults ext_authz: checked on every run (a request without a cookie is
denied, and Envoy's ``ext_authz.ok`` counter moves with wrk's request count).

Phases, all in one run, every authz backend its own process on its own loopback port:

1. saturation: ``wrk -t1 -c16`` per scenario, interleaved in rounds (each round runs every scenario once, so
   all see the same machine noise); req/s and the authz process's CPU µs per request (``/proc``, over each fixed
   run) are medians over the rounds; percentiles merged over the rounds from wrk's quantiles at 0.1 % steps;
   ``CONFIG RESETSTAT`` / ``INFO commandstats`` around every run give Redis commands per allowed request;
2. added latency at low load: 1,000 sequential requests per listener (Envoy alone, gRPC and HTTP, sidecar and
   constant), interleaved in blocks;
3. latency at about half saturation: wrk2 is not in Debian, so wrk paces itself with a Lua ``delay()`` (a
   think time per connection, calibrated by a probe run) at half of each scenario's saturated rate, and Envoy
   alone is run at the same rate and connection count; "added p99" is the difference of the two p99s;
4. RSS (``VmRSS``) of every authz process after those runs;
5. revocation propagation: two more sidecars (cache on) on the same Valkey; per sample a new session is
   checked on both (gRPC, direct), the second one is verified to answer from its cache, the session is revoked
   by this process (a third client), and the second sidecar is polled every 1 ms until it denies.

Writes ``bench/results.md`` (which targets of issues #14 and #5 hold) and prints it. The parts:
``throughput_stack`` (scenarios, processes, Envoy), ``throughput_sessions`` (the cookies, revocation),
``throughput_wrk`` (the load) and ``throughput_report``.

    python bench/throughput.py [--duration 5] [--rounds 3] [--sequential 1000] [--revocations 50]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from throughput_report import Measured, machine, report
from throughput_sessions import plant_sessions, revocation, spring_available
from throughput_stack import (
    ALONE,
    BACKEND_LABELS,
    BENCH_ERRORS,
    CONST_GRPC,
    CONST_HTTP,
    EXPRESS,
    GRPC_HIT,
    GRPC_HIT_UNIX,
    GRPC_MISS,
    HTTP_ADAPTER,
    HTTP_HIT,
    HTTP_HIT_UNIX,
    HTTP_TEMPLATE,
    NAIVE,
    ROOT,
    SPRING,
    BenchError,
    Scenario,
    Stack,
    log,
    machine_busy_seconds,
    rss_mib,
    running_stack,
    show_failure,
    start_scenario_backends,
    start_sidecar,
    verify_edge,
    wait_up,
)
from throughput_wrk import half_saturation, saturation, sequential_latency

sys.path.insert(0, str(ROOT))

from tests.support import processes

RESULTS = Path(__file__).resolve().parent / "results.md"


def wait_for_quiet(limit: float) -> str:
    """Wait (up to ``limit`` s) until the rest of the machine uses under a fifth of a core; say what was seen."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy_seconds()
        time.sleep(1.0)
        busy = machine_busy_seconds() - before
        if busy < 0.2:
            return f"{100 * busy:.0f} % of a core busy before the start"
        if time.monotonic() >= deadline:
            return f"**{100 * busy:.0f} % of a core busy before the start** (other work on the machine)"
        log(f"the machine is busy ({100 * busy:.0f} % of a core): waiting for it to calm down")


def http_mode() -> tuple[bool, str]:
    missing = [p.relative_to(ROOT).as_posix() for p in (HTTP_ADAPTER, HTTP_TEMPLATE) if not p.exists()]
    if missing:
        return False, "not measured: " + ", ".join(missing) + " missing in this checkout"
    return True, "measured (`listen.http`, Envoy `http_service` from `mesh-config/envoy/envoy-http.yaml`)"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def checkout() -> str:
    """The commit measured, and whether the product's code had changes not committed yet (they are measured)."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "sidecar"], capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return "? (not a git checkout)"
    changed = len(dirty.stdout.splitlines())
    return head.stdout.strip() + (f" + {changed} uncommitted changes in sidecar/" if changed else "")


def versions(stack: Stack) -> dict[str, str]:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        server = client.info("server")
    finally:
        client.close()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    wrk_line = (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "wrk"
    return {
        "session-sidecar": f"{version('session-sidecar')} at {checkout()}",
        "Envoy": processes.envoy_version(),
        "Valkey": str(server.get("valkey_version") or server.get("redis_version")),
        "wrk": " ".join(wrk_line.split()[:2]),
        "Python": platform.python_version(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "redis-py": version("redis"),
        "hiredis": version("hiredis"),
        "uvloop": version("uvloop"),
        "httptools": version("httptools"),
    }


def chosen(args: argparse.Namespace, with_http: bool, with_spring: bool) -> list[Scenario]:
    scenarios = [ALONE, GRPC_HIT, GRPC_MISS, NAIVE, CONST_GRPC, GRPC_HIT_UNIX]
    if with_http:
        scenarios += [HTTP_HIT, CONST_HTTP, HTTP_HIT_UNIX]
    if with_spring:
        scenarios.append(SPRING)
    if not args.no_express:
        scenarios.append(EXPRESS)
    return scenarios


def measure(workdir: Path, args: argparse.Namespace, notes: dict[str, str], started: float) -> Measured:
    scenarios = chosen(args, notes["http"].startswith("measured"), notes["spring"] == "measured")
    quiet = wait_for_quiet(args.quiet_wait)
    machine_at_start = f"{machine()}, {quiet}"
    with running_stack(
        workdir, scenarios, start_scenario_backends(scenarios, naive_uvloop=not args.naive_asyncio)
    ) as stack:
        stack.cookies, bogus = plant_sessions(stack.redis_url, "bench", spring=SPRING in scenarios)
        verify_edge(stack, scenarios, bogus)
        stats = redis.Redis.from_url(stack.redis_url)
        try:
            log(f"saturation: {args.rounds} rounds x {len(scenarios)} scenarios x {args.duration} s")
            sat = saturation(stack, scenarios, args, stats)
        finally:
            stats.close()
        for s in scenarios:
            ok = sat[s.name].authz_ok
            if ok is not None and ok < 0.99 * sat[s.name].requests:
                raise BenchError(f"{s.name}: Envoy counted {ok} ext_authz OKs for {sat[s.name].requests} requests")
        low = [
            s
            for s in (ALONE, GRPC_HIT, GRPC_HIT_UNIX, CONST_GRPC, HTTP_HIT, HTTP_HIT_UNIX, CONST_HTTP)
            if s in scenarios
        ]
        log(f"low load: {args.sequential} sequential requests x {len(low)} listeners")
        low_load = sequential_latency(stack, low, args.sequential, args.block)
        paced = []
        if args.paced_rounds > 0:
            targets = [s for s in (GRPC_HIT, HTTP_HIT, GRPC_MISS, NAIVE) if s in scenarios]
            log(f"half saturation: {len(targets)} scenarios and Envoy alone at their rates")
            paced = half_saturation(stack, targets, sat, args)
        rss = {BACKEND_LABELS[b.name]: rss_mib(b.proc.pid) for b in stack.backends.values()}
        log(f"revocation: {args.revocations} samples")
        first, second = (start_sidecar(stack, name, cache=True) for name in ("revoke_a", "revoke_b"))
        wait_up(first)
        wait_up(second)
        revocations = asyncio.run(revocation(stack.redis_url, first, second, args.revocations))
        found = versions(stack)
    return Measured(
        scenarios=scenarios,
        sat=sat,
        paced=paced,
        low_load=low_load,
        rss=rss,
        revocations=revocations,
        versions=found,
        notes=notes,
        seconds=time.monotonic() - started,
        machine=machine_at_start,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ext_authz throughput, CPU, latency and Redis cost (make bench)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per saturation run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every scenario (medians)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of discarded warm-up per scenario")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections at saturation")
    parser.add_argument("--sequential", type=int, default=1000, help="sequential requests per listener (low load)")
    parser.add_argument("--block", type=int, default=50, help="low load: requests per listener per turn")
    parser.add_argument("--half-duration", type=int, default=3, help="seconds per paced run")
    parser.add_argument("--paced-rounds", type=int, default=2, help="rounds of paced runs (0: skip the phase)")
    parser.add_argument("--calibration", type=int, default=2, help="seconds of the paced runs' calibration probe")
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument("--quiet-wait", type=float, default=30, help="max seconds to wait for an idle machine")
    parser.add_argument("--naive-asyncio", action="store_true", help="run the naive baseline without uvloop")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP mode even when it exists")
    parser.add_argument("--no-express", action="store_true", help="skip the Express scenario")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        print("error: wrk is missing: run 'sudo apt-get install wrk' (or `make bench` as root)", file=sys.stderr)
        return 1
    _, http_note = http_mode()
    if args.no_http:
        http_note = "skipped (--no-http)"
    spring_missing = spring_available()
    notes = {"http": http_note, "spring": spring_missing or "measured"}
    log(f"HTTP mode: {notes['http']}; Spring Session: {notes['spring']}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="session-sidecar-throughput-") as tmp:
        workdir = Path(tmp)
        try:
            measured = measure(workdir, args, notes, started)
        except BENCH_ERRORS as exc:
            show_failure(workdir, exc)
            return 1
    text = report(measured, args)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
