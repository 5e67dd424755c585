"""Issue #12's "no slowdown beyond noise": the sidecar before the redesign against HEAD, in one interleaved run.

Each side is a clean, temporary ``git worktree`` of its commit (uncommitted edits are not measured), served as
``python -m sidecar serve`` under this Python, with ``PYTHONPATH`` and the working directory set to the worktree; a
probe under that same environment checks that ``import sidecar`` loads the worktree's code.

One Valkey, one Envoy (1 worker, ``direct_response`` routes, ext_authz from ``mesh-config/envoy`` through
``throughput_stack.envoy_config``) with listeners ``alone`` (no ext_authz) and, per side, ``<side>_grpc_hit``
(cache on), ``<side>_http_hit`` (``listen.http``, cache on, its own process) and ``<side>_grpc_miss``
(``SIDECAR_CACHE__ENABLED=false``). All read one native session: the format did not change between the versions,
and that is checked, not assumed. Each side's own ``SessionManager`` makes a live and a revoked session; every
listener must allow both live ones and deny both revoked ones and a request without a cookie.

wrk runs (``throughput_wrk.run_wrk``: ``-t1 -c16``, the authz process's CPU from /proc) are interleaved: each
round runs every scenario once, the two sides of a pair back to back, before first in even rounds and after first
in odd ones. Medians over the rounds; the per-round after/before ratios show what noise alone does to a ratio.
Writes ``bench/results/redesign.md``.

    .venv/bin/python bench/redesign.py [--before bc1d100] [--after HEAD] [--rounds 5] [--duration 5]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
from throughput import wait_for_quiet
from throughput_report import load_average, machine
from throughput_stack import (
    ALONE,
    BENCH_ERRORS,
    LOOPBACK,
    ROOT,
    Backend,
    BenchError,
    Scenario,
    Stack,
    log,
    running_stack,
    show_failure,
    sidecar_env,
    verify_edge,
    wait_up,
)
from throughput_wrk import Merged, run_wrk

sys.path.insert(0, str(ROOT))

from tests.support import processes

RESULTS = ROOT / "bench" / "results" / "redesign.md"
SIDES = ("before", "after")
# pair key → (label, backend kind, Envoy ext_authz kind); the backend kinds are the processes of each side.
PAIRS = {
    "grpc_hit": ("gRPC, cache hit", "hit", "grpc"),
    "http_hit": ("HTTP, cache hit", "http", "http"),
    "grpc_miss": ("gRPC, cache off (miss)", "miss", "grpc"),
}
CACHED = {"hit": True, "http": True, "miss": False}
COOKIE = "SESSION"

# Run on a side's worktree: that side's own code makes a session (and a revoked one) on the bench's Valkey. The two
# versions name the lifecycle module differently (#12 item 6 renamed sidecar.sessions).
MAKE_SESSIONS = """
import asyncio, sys
import sidecar
try:
    from sidecar.lifecycle import SessionManager
    from sidecar.keyring import KeyRingSource
except ImportError:
    from sidecar.sessions import KeyRingSource, SessionManager
from sidecar.store.redis import RedisStore

async def main(url, prefix, user):
    store = RedisStore.from_url(url, prefix, timeout=2.0)
    try:
        manager = SessionManager(store, KeyRingSource(store, None), cookie_name="SESSION", idle_timeout=1800,
                                 absolute_timeout=43200)
        live = await manager.create(user, email=user + "@example.com", roles=("dev",))
        revoked = await manager.create(user + "-revoked")
        await manager.revoke(revoked.token)
        print(sidecar.__file__, live.token, revoked.token)
    finally:
        await store.close()

asyncio.run(main(*sys.argv[1:]))
"""


@dataclass(frozen=True)
class Side:
    name: str
    ref: str
    commit: str
    subject: str
    tree: Path


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def worktrees(workdir: Path, refs: dict[str, str]) -> Iterator[dict[str, Side]]:
    """A detached, clean worktree per side, removed at the end whatever happened."""
    sides: dict[str, Side] = {}
    try:
        for name, ref in refs.items():
            commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
            tree = workdir / f"tree-{name}"
            git("worktree", "add", "--detach", "--quiet", str(tree), commit)
            subject = git("log", "-1", "--format=%s", commit)
            sides[name] = Side(name, ref, commit, subject, tree)
        yield sides
    finally:
        for side in sides.values():
            with contextlib.suppress(BenchError):
                git("worktree", "remove", "--force", str(side.tree))
        with contextlib.suppress(BenchError):
            git("worktree", "prune")


def side_env(side: Side, extra: dict[str, str]) -> dict[str, str]:
    # Inherited SIDECAR_* would configure both sides alike but silently; PYTHONPATH must name only this side.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_") and k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(side.tree), "PYTHONUNBUFFERED": "1", **extra}


def probe(side: Side) -> str:
    """Where ``import sidecar`` comes from under the sidecar's own interpreter, environment and directory."""
    done = subprocess.run(
        [sys.executable, "-c", "import sidecar; print(sidecar.__file__)"],
        capture_output=True,
        text=True,
        env=side_env(side, {}),
        cwd=side.tree,
        check=False,
    )
    where = done.stdout.strip()
    if done.returncode != 0 or not Path(where).is_relative_to(side.tree):
        raise BenchError(f"{side.name}: import sidecar loads {where or done.stderr.strip()!r}, not {side.tree}")
    return where


def scenario(side: str, pair: str) -> Scenario:
    label, backend, kind = PAIRS[pair]
    return Scenario(f"{side}_{pair}", f"{side}: {label}", f"{side}_{backend}", kind)


def start_side(stack: Stack, side: Side, kind: str, admin: dict[str, int]) -> Backend:
    name = f"{side.name}_{kind}"
    grpc_port, http_port, admin_port = (processes.free_port() for _ in range(3))
    env = sidecar_env(stack.redis_url, cache=CACHED[kind], grpc=grpc_port, http=http_port, admin=admin_port)
    log_file = (stack.workdir / f"{name}.log").open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=side_env(side, env),
            cwd=side.tree,
            start_new_session=True,
        )
    finally:
        log_file.close()
    stack.started.append(proc)
    admin[name] = admin_port
    return Backend(name, proc, grpc_port, http_port)


def side_backends(sides: dict[str, Side], admin: dict[str, int]) -> Callable[[Stack], None]:
    """Every side's sidecars (cache hit, HTTP, cache miss), each importing its own tree."""

    def start(stack: Stack) -> None:
        for side in sides.values():
            for kind in CACHED:
                backend = start_side(stack, side, kind, admin)
                stack.backends[backend.name] = backend
        for backend in stack.backends.values():
            wait_up(backend, http=backend.name.endswith("_http"))

    return start


def make_sessions(stack: Stack, side: Side) -> tuple[str, str]:
    """A live and a revoked session made by ``side``'s own code; their cookies."""
    done = subprocess.run(
        [sys.executable, "-c", MAKE_SESSIONS, stack.redis_url, "sidecar:", f"bench-{side.name}"],
        capture_output=True,
        text=True,
        env=side_env(side, {}),
        cwd=side.tree,
        timeout=30,
        check=False,
    )
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 3 or not Path(parts[0]).is_relative_to(side.tree):
        raise BenchError(f"{side.name}: making sessions failed: {done.stderr.strip()[-1000:] or done.stdout!r}")
    return f"{COOKIE}={parts[1]}", f"{COOKIE}={parts[2]}"


def check_sessions(stack: Stack, sides: dict[str, Side], scenarios: list[Scenario]) -> dict[str, str]:
    """Every listener allows each side's live session and denies each side's revoked one and no cookie; returns
    the live cookie per side (wrk sends the after side's to every listener)."""
    live = {}
    for side in sides.values():
        cookie, revoked = make_sessions(stack, side)
        stack.cookies = {"native": cookie}
        verify_edge(stack, scenarios, {"native": revoked})
        live[side.name] = cookie
    return live


def cache_lookups(port: int) -> tuple[float, float]:
    """``sidecar_cache_lookups_total`` (hits, misses) from the admin listener's /metrics."""
    text = httpx.get(f"http://{LOOPBACK}:{port}/metrics", trust_env=False, timeout=5.0).text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    hits, misses = (float(samples.get(f'sidecar_cache_lookups_total{{result="{r}"}}', 0)) for r in ("hit", "miss"))
    return hits, misses


def order(round_number: int) -> list[Scenario]:
    first, second = SIDES if round_number % 2 == 0 else tuple(reversed(SIDES))
    return [ALONE, *(scenario(side, pair) for pair in PAIRS for side in (first, second))]


@dataclass
class Result:
    sides: dict[str, Side]
    probes: dict[str, str]
    scenarios: list[Scenario]
    merged: dict[str, Merged]
    cache: dict[str, tuple[float, float]]  # backend → (hits, misses) after the runs
    versions: dict[str, str]
    machine: str
    load_end: str
    seconds: float


def measure(workdir: Path, sides: dict[str, Side], args: argparse.Namespace, started: float) -> Result:
    probes = {name: probe(side) for name, side in sides.items()}
    scenarios = order(0)
    quiet = wait_for_quiet(args.quiet_wait)
    at_start = f"{machine()}, {quiet}"
    admin: dict[str, int] = {}
    with running_stack(workdir, scenarios, side_backends(sides, admin)) as stack:
        live = check_sessions(stack, sides, scenarios)
        stack.cookies = {"native": live["after"]}
        for s in scenarios:  # warm-up (discarded): connections, caches, the key ring
            run_wrk(stack, s, connections=args.connections, seconds=args.warmup)
        merged = {s.name: Merged([]) for s in scenarios}
        for number in range(args.rounds):
            log(f"round {number + 1} of {args.rounds}")
            for s in order(number):
                run = run_wrk(stack, s, connections=args.connections, seconds=args.duration)
                merged[s.name].runs.append(run)
                us = run.cpu_us_per_request("authz")
                log(
                    f"  {s.name:18} {run.rps:8.0f} req/s"
                    + ("" if us is None else f"  authz {us:6.0f} µs/req")
                    + f"  other {100 * run.cpu['other'] / run.seconds:3.0f} %"
                )
        for s in scenarios:
            m = merged[s.name]
            if m.errors:
                raise BenchError(f"{s.name}: {m.errors} non-2xx answers or socket errors")
            if m.authz_ok is not None and m.authz_ok < 0.99 * m.requests:
                raise BenchError(f"{s.name}: Envoy counted {m.authz_ok} ext_authz OKs for {m.requests} requests")
        cache = {name: cache_lookups(port) for name, port in admin.items() if not name.endswith("_miss")}
        client = redis.Redis.from_url(stack.redis_url)
        try:
            valkey = str(client.info("server").get("valkey_version"))
        finally:
            client.close()
    versions = {
        "Envoy": processes.envoy_version(),
        "Valkey": valkey,
        "Python": sys.version.split()[0],
        **{
            dist: importlib.metadata.version(dist)
            for dist in ("grpcio", "protobuf", "redis", "hiredis", "uvloop", "httptools")
        },
    }
    return Result(
        sides, probes, scenarios, merged, cache, versions, at_start, load_average(), time.monotonic() - started
    )


# --------------------------------------------------------------------------------------------------- report


def pair_ratios(r: Result, pair: str, value: str) -> tuple[float | None, list[float]]:
    """after/before of the medians, and of each round (the same round: the same machine noise)."""
    before, after = r.merged[f"before_{pair}"], r.merged[f"after_{pair}"]
    if value == "rps":
        per_round = [a.rps / b.rps for a, b in zip(after.runs, before.runs, strict=True)]
        return after.median_rps / before.median_rps, per_round
    per_round = []
    for a, b in zip(after.runs, before.runs, strict=True):
        ua, ub = a.cpu_us_per_request("authz"), b.cpu_us_per_request("authz")
        if ua is not None and ub:
            per_round.append(ua / ub)
    mb, ma = before.median_cpu_us("authz"), after.median_cpu_us("authz")
    return (ma / mb if ma is not None and mb else None), per_round


def verdict(per_round: list[float], higher_is_better: bool) -> str:
    worse = [x < 1 if higher_is_better else x > 1 for x in per_round]
    if all(worse):
        return "**worse in every round**"
    if not any(worse):
        return "better in every round"
    return f"worse in {sum(worse)} of {len(worse)} rounds (within noise)"


def other_share(m: Merged) -> float:
    return 100 * sum(run.cpu["other"] for run in m.runs) / sum(run.seconds for run in m.runs)


def report(r: Result, args: argparse.Namespace) -> str:
    all_runs = [run for m in r.merged.values() for run in m.runs]
    shares = [100 * run.cpu["other"] / run.seconds for run in all_runs]
    lines = [
        f"# {args.title} (`bench/redesign.py`)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; whole run {r.seconds:.0f} s",
        *(
            f"- {s.name}: `{s.commit[:7]}` ({s.ref}) {s.subject[:110]}{'…' if len(s.subject) > 110 else ''}"
            for s in r.sides.values()
        ),
        "- each side is a clean `git worktree` of its commit (uncommitted edits are not measured), served as "
        "`python -m sidecar serve` with PYTHONPATH and cwd set to it; `import sidecar` under that environment "
        "loads " + "; ".join(f"{name}: `{path}`" for name, path in r.probes.items()) + " (temporary worktrees)",
        f"- machine: {r.machine}; load average at the end {r.load_end}",
        f"- **other processes on the machine (not the bench's): {statistics.mean(shares):.0f} % of a core on "
        f"average during the wrk runs, {max(shares):.0f} % at most** (`/proc/stat` busy time minus the bench's "
        "processes)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in r.versions.items()),
        f"- load: wrk `-t1 -c{args.connections}`, keep-alive GETs, the after side's session cookie on every "
        "listener; Envoy 1 worker, `direct_response` routes, ext_authz from `mesh-config/envoy` (the same Envoy "
        "config for both sides)",
        f"- {args.rounds} interleaved rounds of {args.duration} s per scenario after a {args.warmup} s warm-up "
        "each; in each round the two sides of a pair run back to back, before first in even rounds and after "
        "first in odd ones; **req/s and authz CPU µs per request are medians over the rounds**",
        "- checked before the runs: the session format did not change. A session made by each side's own "
        "`SessionManager` is allowed on every listener of both sides, a session each side made and revoked is "
        "denied on all of them, and so is a request without a cookie. During the runs every request was a 200 and "
        "Envoy's `ext_authz.ok` moved with wrk's count",
        "",
        "## Saturation",
        "",
        "| scenario | req/s | authz CPU µs/req | Envoy µs/req | p50 ms | p99 ms | requests | other CPU % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in [ALONE, *(scenario(side, pair) for pair in PAIRS for side in SIDES)]:
        m = r.merged[s.name]
        us = m.median_cpu_us("authz")
        lines.append(
            f"| {s.label} | {m.median_rps:,.0f} | {'-' if us is None else f'{us:,.0f}'} "
            f"| {m.median_cpu_us('envoy') or 0:,.0f} | {m.percentile_ms(50):.2f} | {m.percentile_ms(99):.2f} "
            f"| {m.requests:,} | {other_share(m):.0f} |"
        )
    lines += [
        "",
        "## After ÷ before",
        "",
        "Per-round ratios compare the two sides in the same round (run back to back); their spread is what noise "
        "alone does to a ratio here.",
        "",
        "| pair | req/s after ÷ before (medians) | per round | req/s | CPU µs/req after ÷ before | per round "
        "| CPU µs/req |",
        "| --- | ---: | --- | --- | ---: | --- | --- |",
    ]
    for pair, (label, _, _) in PAIRS.items():
        rps, rps_rounds = pair_ratios(r, pair, "rps")
        cpu, cpu_rounds = pair_ratios(r, pair, "cpu")
        lines.append(
            f"| {label} | {rps:.3f} | {', '.join(f'{x:.2f}' for x in rps_rounds)} | {verdict(rps_rounds, True)} "
            f"| {'-' if cpu is None else f'{cpu:.3f}'} | {', '.join(f'{x:.2f}' for x in cpu_rounds)} "
            f"| {verdict(cpu_rounds, False)} |"
        )
    alone = [run.rps for run in r.merged[ALONE.name].runs]
    lines += [
        "",
        f"Noise gauge: Envoy alone ran at {min(alone):,.0f} to {max(alone):,.0f} req/s over the rounds "
        f"(median {statistics.median(alone):,.0f}).",
        "",
        "Cache lookups counted by the cache-on sidecars after the runs (`sidecar_cache_lookups_total`, the checks "
        "and the warm-up included; issue #12 notes that before it a cache-missing Check counted two misses): "
        + "; ".join(f"{name} {hits:,.0f} hits, {misses:,.0f} misses" for name, (hits, misses) in r.cache.items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="issue #12: before vs after the redesign, interleaved wrk rounds")
    parser.add_argument("--before", default="bc1d100", help="the last commit before the redesign")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of discarded warm-up per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quiet-wait", type=float, default=10, help="max seconds to wait for an idle machine")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--title", default="Issue #12: the redesign against the code before it", help="the report's heading"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="session-sidecar-redesign-") as tmp:
        workdir = Path(tmp)
        try:
            with worktrees(workdir, {"before": args.before, "after": args.after}) as sides:
                result = measure(workdir, sides, args, started)
        except BENCH_ERRORS as exc:
            show_failure(workdir, exc)
            return 1
    text = report(result, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
