"""``bench/results.md``: what ``bench/throughput.py`` measured, and which targets of issues #14 and #5 hold."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from throughput_sessions import Revocations
from throughput_stack import (
    ALONE,
    CONST_GRPC,
    CONST_HTTP,
    EXPRESS,
    GRPC_HIT,
    GRPC_HIT_UNIX,
    GRPC_MISS,
    HTTP_HIT,
    HTTP_HIT_UNIX,
    NAIVE,
    SPRING,
    Scenario,
)
from throughput_wrk import Merged, Paced, Sequential, nearest_rank

# Run inside the resolve script (EVALSHA) of a native miss: no round trip of their own.
SCRIPT_INNER = frozenset({"hstrlen", "hmget", "hset", "pexpireat"})

# Targets of issue #14 (medians of the same run).
TARGET_GRPC_VS_NAIVE = 2.0
TARGET_GRPC_VS_CONSTANT = 0.75
TARGET_HTTP_VS_CONSTANT = 0.9
TARGET_ADDED_P50_GRPC_MS = 0.5
TARGET_MISS_VS_NAIVE = 1.5
# Targets of issue #5.
TARGET_HTTP_VS_ENVOY = 0.35
TARGET_ADDED_P99_GRPC_MS = 2.0
TARGET_ADDED_P99_HTTP_MS = 1.0
TARGET_COMMANDS_PER_REQUEST = 0.05
TARGET_REVOCATION_P99_MS = 100.0


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"nproc {len(os.sched_getaffinity(0))} ({model}), {platform.system()} {platform.release()} "
        f"{platform.machine()}, load average at the start {load_average()}"
    )


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


@dataclass
class Measured:
    scenarios: list[Scenario]
    sat: dict[str, Merged]
    paced: list[Paced]
    low_load: list[Sequential]
    rss: dict[str, float]
    revocations: Revocations
    versions: dict[str, str]
    notes: dict[str, str]  # "http", "spring": measured or why not
    seconds: float
    machine: str


def disturbance(m: Measured) -> str:
    """How much CPU processes outside the bench took during the measured runs."""
    runs = [run for merged in m.sat.values() for run in merged.runs]
    runs += [run for plan in m.paced for merged in (plan.measured, plan.alone) for run in merged.runs]
    shares = [100 * run.cpu.get("other", 0.0) / run.seconds for run in runs]
    mean = sum(shares) / max(len(shares), 1)
    text = (
        f"other processes on the machine: {mean:.0f} % of a core on average during the wrk runs, "
        f"{max(shares, default=0):.0f} % at most"
    )
    if mean > 25:
        return (
            f"**{text}: the machine was not quiet, so absolute numbers are low and noisy** (ratios of the same "
            "run and CPU µs per request less so)"
        )
    return text + " (a quiet machine)"


def commands_text(commands: dict[str, int]) -> str:
    return ", ".join(f"{name.upper()} {calls}" for name, calls in sorted(commands.items(), key=lambda kv: -kv[1]))


def _number(value: float | None, pattern: str) -> str:
    return "-" if value is None or math.isnan(value) else pattern.format(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def header(m: Measured, args: argparse.Namespace) -> list[str]:
    return [
        "# Throughput of the ext_authz paths (issues #14, #13 and #5)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; whole run {m.seconds:.0f} s "
        "(`python bench/throughput.py`, part of `make bench`)",
        f"- machine: {m.machine} (load generator, Envoy, the authz processes and Valkey all share it); "
        f"load average at the end {load_average()}",
        f"- {disturbance(m)}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
        f"- load: {m.versions['wrk']} `-t1 -c{args.connections}`, keep-alive GETs with the session cookie (Lua "
        "script); Envoy with 1 worker; every listener answers with a `direct_response` route (no upstream), "
        "the ext_authz filter copied from `mesh-config/envoy/envoy.yaml` (gRPC) or `envoy-http.yaml` (HTTP)",
        "- checked before the runs: on every authz listener the live cookie gets the direct_response and a request "
        "without a cookie gets 401 (but the constant gRPC server, which reads nothing); where the backend reads "
        "sessions, a well-formed cookie naming no session gets 401 too. During the runs Envoy's `ext_authz.ok` "
        "counter moved with wrk's request count (column *authz OK*)",
        f"- runs interleaved: {args.rounds} rounds, each runs every scenario once ({args.duration} s each, after a "
        f"{args.warmup} s warm-up per scenario); **req/s and CPU µs per request are medians over the rounds**; "
        "percentiles are merged over the rounds from wrk's quantiles at 0.1 % steps",
        f"- HTTP mode: {m.notes['http']}; Spring Session: {m.notes['spring']}; the naive baseline runs on "
        + ("plain asyncio (`--naive-asyncio`)" if args.naive_asyncio else "uvloop, like `sidecar serve`"),
        "",
    ]


SCENARIO_NOTES = {
    ALONE.name: "no ext_authz filter",
    GRPC_HIT.name: "`sidecar serve`, cache on, the same valid session on every request",
    GRPC_MISS.name: "`SIDECAR_CACHE__ENABLED=false`: one resolve script (`EVALSHA`) per request",
    NAIVE.name: "`bench/naive_authz.py`: grpc.aio + one redis.asyncio GET, no core",
    CONST_GRPC.name: "`bench/constant_grpc.py`: sync `grpc.server`, 4 threads, a constant OK (the gRPC ceiling)",
    HTTP_HIT.name: "`listen.http`, cache on",
    GRPC_HIT_UNIX.name: "`listen.grpc: unix:/path` (Envoy: a `pipe` endpoint), cache on",
    HTTP_HIT_UNIX.name: "`listen.http: unix:/path` of the same process, cache on",
    CONST_HTTP.name: "`bench/constant_http.py`: uvloop + httptools, reads the cookie, constant 200 (the HTTP ceiling)",
    SPRING.name: "`sources: [native, spring-session, express]`; a Spring Session hash (real Spring Security 7.2 bytes)",
    EXPRESS.name: "the same sidecar; an express-session JSON under `sess:<id>`, signed `connect.sid`",
}


def saturation_section(m: Measured) -> list[str]:
    sat = m.sat
    alone = sat[ALONE.name].median_rps
    lines = [
        "## Saturation (closed loop)",
        "",
        "*authz µs/req* is the CPU time (user + system, all threads, `/proc/PID/stat`) of the authz process over "
        "each fixed-length wrk run divided by the requests of that run: far less disturbed than req/s by what "
        "else the machine runs, though not immune (a process descheduled more often wakes up more per request). "
        "*Envoy µs/req* the same for Envoy.",
        "",
        "| scenario | req/s | vs Envoy alone | authz µs/req | Envoy µs/req | p50 ms | p99 ms | requests | errors "
        "| authz OK (Envoy) | CPU % authz / Envoy / wrk / Valkey / other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in m.scenarios:
        r = sat[s.name]
        ok = "-" if r.authz_ok is None else f"{r.authz_ok:,}"
        cpu = " / ".join(
            _number(r.cpu_percent(name), "{:.0f}") for name in ("authz", "envoy", "wrk", "valkey", "other")
        )
        lines.append(
            f"| {s.label} | {r.median_rps:,.0f} | {r.median_rps / alone:.3f} "
            f"| {_number(r.median_cpu_us('authz'), '{:.0f}')} | {_number(r.median_cpu_us('envoy'), '{:.0f}')} "
            f"| {r.percentile_ms(50):.2f} | {r.percentile_ms(99):.2f} | {r.requests:,} | {r.errors} | {ok} | {cpu} |"
        )
    lines += [
        "",
        "CPU % is each process's user + system time over the measured runs, in % of one core (the machine has "
        f"{os.cpu_count()}); *other* is the rest of the machine's user + system (+ steal) time in `/proc/stat`: "
        "processes that are not part of the bench (other work on the machine). Much *other* means req/s are "
        "disturbed; CPU µs per request less so.",
        "",
        "| scenario | what it is |",
        "| --- | --- |",
        *(f"| {s.label} | {SCENARIO_NOTES[s.name]} |" for s in m.scenarios),
        "",
    ]
    return lines


def ratios(m: Measured) -> list[tuple[str, float, float | None]]:
    """(name, req/s ratio, CPU µs ratio) for the pairs issue #14 compares, and the framework sources'."""
    pairs = [
        ("gRPC hit ÷ naive", GRPC_HIT, NAIVE),
        ("gRPC hit ÷ constant sync gRPC", GRPC_HIT, CONST_GRPC),
        ("HTTP hit ÷ constant HTTP", HTTP_HIT, CONST_HTTP),
        ("gRPC miss ÷ naive", GRPC_MISS, NAIVE),
        ("gRPC hit, unix socket ÷ TCP", GRPC_HIT_UNIX, GRPC_HIT),
        ("HTTP hit, unix socket ÷ TCP", HTTP_HIT_UNIX, HTTP_HIT),
        ("gRPC hit, unix socket ÷ constant sync gRPC (TCP)", GRPC_HIT_UNIX, CONST_GRPC),
        ("gRPC hit, unix socket ÷ naive", GRPC_HIT_UNIX, NAIVE),
        ("HTTP hit, unix socket ÷ constant HTTP (TCP)", HTTP_HIT_UNIX, CONST_HTTP),
        ("Spring (uncached) ÷ gRPC hit", SPRING, GRPC_HIT),
        ("Spring (uncached) ÷ gRPC miss", SPRING, GRPC_MISS),
        ("Express (uncached) ÷ gRPC miss", EXPRESS, GRPC_MISS),
    ]
    rows = []
    for name, top, bottom in pairs:
        a, b = m.sat.get(top.name), m.sat.get(bottom.name)
        if a is None or b is None:
            continue
        rows.append((name, a.median_rps / b.median_rps, _ratio(a.median_cpu_us("authz"), b.median_cpu_us("authz"))))
    return rows


def ratio_section(m: Measured) -> list[str]:
    return [
        "## Ratios (medians of the same run)",
        "",
        "| ratio | req/s | authz CPU µs per request |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {rps:.2f}x | {_number(cpu, '{:.2f}x')} |" for name, rps, cpu in ratios(m)),
        "",
    ]


def sources_section(m: Measured) -> list[str]:
    """Issue #13: the framework sources beside the native ones."""
    rows = [s for s in (GRPC_HIT, GRPC_MISS, SPRING, EXPRESS) if s.name in m.sat]
    if SPRING.name not in m.sat and EXPRESS.name not in m.sat:
        return []
    lines = [
        "## Framework sessions beside native ones (issue #13, gRPC mode)",
        "",
        "Framework sources are not cached: every request reads the application's Redis (Spring: a pipeline of "
        "`EXISTS` + 4 `HSTRLEN` to bound the fields, then `HMGET`: two round trips; Express: one pipeline of "
        "`STRLEN`, `GETRANGE`, `PTTL`). The native source is tried first on the framework sidecar: the Spring "
        "cookie is also named `SESSION`, and the native source refuses it before any session read (no `EVALSHA` in "
        "the Spring row below).",
        "",
        "| scenario | req/s | authz µs/req | p50 ms | p99 ms | Redis commands per request |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in rows:
        r = m.sat[s.name]
        per = sum(r.commands().values()) / max(r.allowed, 1)
        lines.append(
            f"| {s.label} | {r.median_rps:,.0f} | {_number(r.median_cpu_us('authz'), '{:.0f}')} "
            f"| {r.percentile_ms(50):.2f} | {r.percentile_ms(99):.2f} | {per:.2f} |"
        )
    return [*lines, ""]


def low_load_section(m: Measured, args: argparse.Namespace) -> list[str]:
    alone = next((x for x in m.low_load if x.scenario == ALONE), None)
    if alone is None:
        return []
    lines = [
        "## Added latency at low load (sequential)",
        "",
        f"{args.sequential:,} sequential GETs per listener, one keep-alive connection each (Python `http.client`), "
        f"interleaved in blocks of {args.block} after {args.block} discarded each; *added* is the percentile minus "
        "Envoy alone's (the same listener without the ext_authz filter). Nearest-rank percentiles.",
        "",
        "| scenario | p50 ms | p90 ms | p99 ms | max ms | added p50 ms | added p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for x in m.low_load:
        added = "" if x is alone else f"{x.percentile_ms(50) - alone.percentile_ms(50):.3f}"
        added99 = "" if x is alone else f"{x.percentile_ms(99) - alone.percentile_ms(99):.3f}"
        lines.append(
            f"| {x.scenario.label} | {x.percentile_ms(50):.3f} | {x.percentile_ms(90):.3f} "
            f"| {x.percentile_ms(99):.3f} | {max(x.samples_ms):.3f} | {added} | {added99} |"
        )
    return [*lines, ""]


def paced_section(m: Measured, args: argparse.Namespace) -> list[str]:
    lines = [
        "## Latency at about half saturation (paced)",
        "",
        "wrk2 is not in Debian: each connection pauses (Lua `delay()`, a think time calibrated by a "
        f"{args.calibration} s probe) so the total rate is about half the scenario's saturated rate; Envoy alone is "
        f"run at the same rate and connection count, interleaved with it ({args.paced_rounds} rounds x "
        f"{args.half_duration} s). Latency is measured from each request's send (wrk), not from its schedule.",
        "",
        "| scenario | target req/s | conns | achieved req/s | p50 ms | p99 ms | Envoy alone: req/s | p50 ms | p99 ms "
        "| added p50 ms | added p99 ms | other CPU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for plan in m.paced:
        r, a = plan.measured, plan.alone
        lines.append(
            f"| {plan.scenario.label} | {plan.rate:,.0f} | {plan.connections} | {r.rps:,.0f} "
            f"| {r.percentile_ms(50):.2f} | {r.percentile_ms(99):.2f} "
            f"| {a.rps:,.0f} | {a.percentile_ms(50):.2f} | {a.percentile_ms(99):.2f} "
            f"| {r.percentile_ms(50) - a.percentile_ms(50):.2f} | {r.percentile_ms(99) - a.percentile_ms(99):.2f} "
            f"| {max(r.cpu_percent('other') or 0, a.cpu_percent('other') or 0):.0f} |"
        )
    return [*lines, ""]


def commands_section(m: Measured) -> list[str]:
    lines = [
        "## Redis commands per allowed request (saturation runs)",
        "",
        "`CONFIG RESETSTAT` before and `INFO commandstats` after every measured run, summed over the rounds. The "
        "counts include every process's background traffic: the `PING`s of each sidecar's store health probe and "
        "of its invalidation channel's liveness check (cache on only). `HELLO` and `CLIENT SETINFO` are new "
        "connections being opened (a pool growing when many requests miss at once). For the native scenarios "
        "`HMGET`, `HSTRLEN`, `HSET` and `PEXPIREAT` run inside the `EVALSHA` scripts and cost no round trip, so the "
        "last column counts the others; the framework sources pipeline theirs (see above), so it is not given.",
        "",
        "| scenario | allowed requests | Redis commands | commands per allowed request | round trips per allowed "
        "request |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for s in m.scenarios:
        if not s.reads_session:
            continue
        r = m.sat[s.name]
        commands = r.commands()
        per = sum(commands.values()) / max(r.allowed, 1)
        sent = sum(calls for name, calls in commands.items() if name not in SCRIPT_INNER) / max(r.allowed, 1)
        trips = f"{sent:.4f}" if s.session == "native" else "-"
        lines.append(f"| {s.label} | {r.allowed:,} | {commands_text(commands)} | {per:.4f} | {trips} |")
    return [*lines, ""]


def revocation_section(m: Measured) -> tuple[list[str], float]:
    rev = m.revocations
    rev_p50 = nearest_rank(rev.delays_ms, 50) if rev.delays_ms else math.nan
    rev_p99 = nearest_rank(rev.delays_ms, 99) if rev.delays_ms else math.nan
    polls = nearest_rank([float(p) for p in rev.polls], 50) if rev.polls else math.nan
    return [
        "## Revocation propagation to a second sidecar",
        "",
        "Two more sidecar processes (cache on) on the same Valkey. Per sample: a new session, one gRPC Check on "
        "each (direct, no Envoy), a second Check on the second sidecar verified to be a cache hit (no `EVALSHA` "
        "in commandstats), a revoke by this process (a third client, `SessionManager.revoke`), then the second "
        "sidecar is polled with Check every 1 ms until it denies; the first one is checked to deny too. Time is "
        "from sending the revoke to the first denial (so it includes the revoke's own round trip); percentiles "
        f"by nearest rank, so with {rev.samples} samples the p99 is about the largest.",
        "",
        "| samples (cache hit before revoke) | p50 ms | p99 ms | max ms | polls p50 |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {rev.cached} of {rev.samples} | {rev_p50:.2f} | {rev_p99:.2f} | "
        f"{max(rev.delays_ms, default=math.nan):.2f} | {polls:.0f} |",
        "",
    ], rev_p99


Row = tuple[str, str, str, bool | None]


def _row(name: str, wanted: str, value: float | None, pattern: str, holds: Callable[[float], bool]) -> Row:
    if value is None:
        return name, wanted, "not measured", None
    return name, wanted, pattern.format(value), holds(value)


def targets_14(m: Measured) -> list[Row]:
    sat = m.sat

    def rps_ratio(a: Scenario, b: Scenario) -> float | None:
        return None if a.name not in sat or b.name not in sat else sat[a.name].median_rps / sat[b.name].median_rps

    low = {x.scenario.name: x for x in m.low_load}
    added_p50 = (
        low[GRPC_HIT.name].percentile_ms(50) - low[ALONE.name].percentile_ms(50)
        if GRPC_HIT.name in low and ALONE.name in low
        else None
    )
    vs_naive = rps_ratio(GRPC_HIT, NAIVE)
    vs_const = rps_ratio(GRPC_HIT, CONST_GRPC)
    http = rps_ratio(HTTP_HIT, CONST_HTTP)
    miss = rps_ratio(GRPC_MISS, NAIVE)

    def detail(a: Scenario, b: Scenario, ratio: float | None) -> str:
        if ratio is None:
            return ""
        return f" ({sat[a.name].median_rps:,.0f} vs {sat[b.name].median_rps:,.0f} req/s)"

    return [
        _row("gRPC cache hit ÷ naive, req/s", f"≥ {TARGET_GRPC_VS_NAIVE}", vs_naive,
             "{:.2f}x" + detail(GRPC_HIT, NAIVE, vs_naive), lambda v: v >= TARGET_GRPC_VS_NAIVE),
        _row("gRPC cache hit ÷ constant sync gRPC, req/s", f"≥ {TARGET_GRPC_VS_CONSTANT}", vs_const,
             "{:.2f}x" + detail(GRPC_HIT, CONST_GRPC, vs_const), lambda v: v >= TARGET_GRPC_VS_CONSTANT),
        _row("HTTP cache hit ÷ constant HTTP, req/s", f"≥ {TARGET_HTTP_VS_CONSTANT}", http,
             "{:.2f}x" + detail(HTTP_HIT, CONST_HTTP, http), lambda v: v >= TARGET_HTTP_VS_CONSTANT),
        _row("added p50 at low load, gRPC (1,000 sequential, with vs without ext_authz)",
             f"≤ {TARGET_ADDED_P50_GRPC_MS} ms", added_p50, "{:.3f} ms", lambda v: v <= TARGET_ADDED_P50_GRPC_MS),
        _row("gRPC cache miss ÷ naive, req/s", f"≥ {TARGET_MISS_VS_NAIVE}", miss,
             "{:.2f}x" + detail(GRPC_MISS, NAIVE, miss), lambda v: v >= TARGET_MISS_VS_NAIVE),
    ]  # fmt: skip


def targets_5(m: Measured, rev_p99: float) -> list[Row]:
    sat = m.sat
    paced = {p.scenario.name: p for p in m.paced}

    def added_p99(name: str) -> float | None:
        plan = paced.get(name)
        return None if plan is None else plan.measured.percentile_ms(99) - plan.alone.percentile_ms(99)

    def per_request(name: str) -> float | None:
        r = sat.get(name)
        return None if r is None else sum(r.commands().values()) / max(r.allowed, 1)

    http = sat.get(HTTP_HIT.name)
    http_ratio = None if http is None else http.median_rps / sat[ALONE.name].median_rps
    return [
        _row("HTTP cache hit ÷ Envoy alone, req/s", f"≥ {TARGET_HTTP_VS_ENVOY}", http_ratio, "{:.3f}",
             lambda v: v >= TARGET_HTTP_VS_ENVOY),
        _row("added p99 at ~half saturation, gRPC (cache hit)", f"≤ {TARGET_ADDED_P99_GRPC_MS} ms",
             added_p99(GRPC_HIT.name), "{:.2f} ms", lambda v: v <= TARGET_ADDED_P99_GRPC_MS),
        _row("added p99 at ~half saturation, HTTP (cache hit)", f"≤ {TARGET_ADDED_P99_HTTP_MS} ms",
             added_p99(HTTP_HIT.name), "{:.2f} ms", lambda v: v <= TARGET_ADDED_P99_HTTP_MS),
        _row("Redis commands per allowed request, gRPC cache hit", f"≤ {TARGET_COMMANDS_PER_REQUEST}",
             per_request(GRPC_HIT.name), "{:.4f}", lambda v: v <= TARGET_COMMANDS_PER_REQUEST),
        _row("Redis commands per allowed request, HTTP cache hit", f"≤ {TARGET_COMMANDS_PER_REQUEST}",
             per_request(HTTP_HIT.name), "{:.4f}", lambda v: v <= TARGET_COMMANDS_PER_REQUEST),
        _row("revocation seen by a second sidecar, p99", f"≤ {TARGET_REVOCATION_P99_MS:.0f} ms",
             None if math.isnan(rev_p99) else rev_p99, "{:.2f} ms", lambda v: v <= TARGET_REVOCATION_P99_MS),
    ]  # fmt: skip


def target_table(rows: list[Row]) -> list[str]:
    return [
        "| target | wanted | measured | |",
        "| --- | ---: | ---: | --- |",
        *(f"| {name} | {wanted} | {value} | {met(ok)} |" for name, wanted, value, ok in rows),
        "",
    ]


def report(m: Measured, args: argparse.Namespace) -> str:
    revocations, rev_p99 = revocation_section(m)
    rows_14 = targets_14(m)
    held = sum(1 for *_, ok in rows_14 if ok)
    lines = [
        *header(m, args),
        f"## Targets of issue #14: {held} of {len(rows_14)} hold",
        "",
        *target_table(rows_14),
        *saturation_section(m),
        *ratio_section(m),
        *sources_section(m),
        *low_load_section(m, args),
        *paced_section(m, args),
        *commands_section(m),
        "## Memory after the runs",
        "",
        "| process | VmRSS MiB |",
        "| --- | ---: |",
        *(f"| {name} | {value:.1f} |" for name, value in m.rss.items()),
        "",
        *revocations,
        "## Targets of issue #5",
        "",
        *target_table(targets_5(m, rev_p99)),
    ]
    return "\n".join(lines)
