"""``make bench`` (issue #5): throughput, latency and Redis cost of each ext_authz path, side by side, with `wrk`.

One Valkey, one Envoy (1 worker) with one listener per scenario, every listener answering with a
``direct_response`` route so no Python upstream is measured:

- ``alone``      Envoy alone: no ext_authz filter;
- ``grpc_hit``   ext_authz gRPC → sidecar (cache on; the same valid session on every request);
- ``grpc_miss``  ext_authz gRPC → sidecar with ``SIDECAR_CACHE__ENABLED=false`` (one Redis script per request);
- ``naive``      ext_authz gRPC → ``bench/naive_authz.py`` (grpc.aio + one redis.asyncio GET, no core);
- ``http_hit``   ext_authz ``http_service`` → the sidecar's ``listen.http`` (cache on), when the HTTP mode exists
                 (``sidecar/authz/http.py`` and ``mesh-config/envoy/envoy-http.yaml``).

The ext_authz filters are copied from ``mesh-config/envoy/envoy.yaml`` (and ``envoy-http.yaml``): only the
cluster ports and the route (``direct_response`` 200) are changed. The filter runs before the router, so a
``direct_response`` route still consults ext_authz: checked on every run (a request without a cookie is
denied, and Envoy's ``ext_authz.ok`` counter moves with wrk's request count).

Phases, all in one run, every authz backend its own process on its own ports:

1. saturation: ``wrk -t1 -c16`` per scenario, interleaved in rounds (each round runs every scenario once, so
   all see the same machine noise); percentiles merged over the rounds from wrk's quantiles at 0.1 % steps;
   ``CONFIG RESETSTAT`` / ``INFO commandstats`` around every run give Redis commands per allowed request;
2. latency at about half saturation: wrk2 is not in Debian, so wrk paces itself with a Lua ``delay()`` (a
   think time per connection, calibrated by a probe run) at half of each scenario's saturated rate, and Envoy
   alone is run at the same rate and connection count; "added p99" is the difference of the two p99s;
3. RSS (``VmRSS``) of every authz process after those runs;
4. revocation propagation: two more sidecars (cache on) on the same Valkey; per sample a new session is
   checked on both (gRPC, direct), the second one is verified to answer from its cache, the session is revoked
   by this process (a third client), and the second sidecar is polled every 1 ms until it denies.

Writes ``bench/results.md`` and prints it.

    python bench/throughput.py [--duration 5] [--rounds 2] [--half-duration 3] [--revocations 50]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import importlib.metadata
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import redis
import redis.asyncio as aioredis
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the process helpers live in tests/support, shared with the tests

from sidecar.keyring import KeyRingSource  # noqa: E402
from sidecar.lifecycle import SessionManager  # noqa: E402
from sidecar.store.redis import RedisStore  # noqa: E402
from tests.support import processes  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = ROOT
RESULTS = BENCH / "results.md"
HTTP_ADAPTER = REPO / "sidecar" / "authz" / "http.py"
HTTP_TEMPLATE = REPO / "mesh-config" / "envoy" / "envoy-http.yaml"
LOOPBACK = processes.LOOPBACK
EXT_AUTHZ = processes.EXT_AUTHZ_FILTER
HCM = "envoy.filters.network.http_connection_manager"
KEY_PREFIX = "sidecar:"
COOKIE = "SESSION"
URL_PATH = "/bench"
QUANTILES = 1000  # wrk quantiles per run (0.1 % steps), to merge percentiles over rounds
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SCRIPT_INNER = frozenset({"hstrlen", "hmget", "hset", "pexpireat"})  # what the resolve script runs inside the server
HALF_CYCLE_MS = 4.0  # paced runs: at least this long between two requests of one connection

# Targets of issue #5.
TARGET_GRPC_VS_NAIVE = 2.0
TARGET_HTTP_VS_ENVOY = 0.35
TARGET_ADDED_P99_GRPC_MS = 2.0
TARGET_ADDED_P99_HTTP_MS = 1.0
TARGET_COMMANDS_PER_REQUEST = 0.05
TARGET_REVOCATION_P99_MS = 100.0


class BenchError(RuntimeError):
    """The bench could not measure what it should (a process, a check or a run failed)."""


@dataclass(frozen=True)
class Scenario:
    name: str  # listener, Envoy stat prefix
    label: str
    backend: str | None  # the authz process behind it; None: Envoy alone
    kind: str  # "none", "grpc" or "http"


ALONE = Scenario("alone", "Envoy alone (direct_response)", None, "none")
GRPC_HIT = Scenario("grpc_hit", "Envoy → sidecar gRPC, cache hit", "sidecar_hit", "grpc")
GRPC_MISS = Scenario("grpc_miss", "Envoy → sidecar gRPC, cache off (miss)", "sidecar_miss", "grpc")
NAIVE = Scenario("naive", "Envoy → naive grpc.aio + Redis GET", "naive", "grpc")
HTTP_HIT = Scenario("http_hit", "Envoy → sidecar HTTP, cache hit", "sidecar_http", "http")


# --------------------------------------------------------------------------------------------------- processes


@dataclass
class Backend:
    name: str
    proc: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int | None = None


@dataclass
class Stack:
    workdir: Path
    redis_url: str
    valkey_port: int
    envoy_admin: int
    listeners: dict[str, int]
    backends: dict[str, Backend]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # envoy, valkey: for their CPU time


def sidecar_env(redis_url: str, *, cache: bool, grpc: int, http: int, admin: int) -> dict[str, str]:
    """Every sidecar gets its own free ports (the defaults may be busy) and talks to the bench's Valkey."""
    return {
        "SIDECAR_REDIS__URL": redis_url,
        "SIDECAR_REDIS__KEY_PREFIX": KEY_PREFIX,
        "SIDECAR_LISTEN__GRPC": f"{LOOPBACK}:{grpc}",
        "SIDECAR_LISTEN__HTTP": f"{LOOPBACK}:{http}",
        "SIDECAR_LISTEN__ADMIN": f"{LOOPBACK}:{admin}",
        "SIDECAR_CACHE__ENABLED": "true" if cache else "false",
        "SIDECAR_LOG__LEVEL": "warning",
    }


def start_sidecar(stack: Stack, name: str, *, cache: bool) -> Backend:
    grpc_port, http_port, admin_port = (processes.free_port() for _ in range(3))
    env = sidecar_env(stack.redis_url, cache=cache, grpc=grpc_port, http=http_port, admin=admin_port)
    proc = processes.start_sidecar(env=env, log_path=stack.workdir / f"{name}.log", hermetic=True)
    stack.started.append(proc)
    return Backend(name, proc, grpc_port, http_port)


def start_naive(stack: Stack, *, uvloop: bool = True) -> Backend:
    port = processes.free_port()
    log = (stack.workdir / "naive.log").open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "naive_authz.py"), "--port", str(port), "--redis", stack.redis_url]
            + ([] if uvloop else ["--no-uvloop"]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )
    finally:
        log.close()
    stack.started.append(proc)
    return Backend("naive", proc, port)


def wait_up(backend: Backend, *, http: bool = False) -> None:
    processes.wait_for_port(LOOPBACK, backend.grpc_port, 30, proc=backend.proc, name=backend.name)
    if http and backend.http_port is not None:
        processes.wait_for_port(LOOPBACK, backend.http_port, 10, proc=backend.proc, name=f"{backend.name} (http)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def children_cpu_seconds() -> float:
    """CPU time of the waited-for children of this process (wrk: the only one waited for during a run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time all cores spent running processes so far, plus the time the hypervisor stole (/proc/stat).

    Interrupt time is left out: it is mostly the bench's own loopback traffic, which no process is charged for.
    """
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = ticks
    return (user + nice + system + steal) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------------------------------- envoy


def _named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise BenchError(f"Envoy template has nothing named {name!r}")


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            if network_filter["name"] == HCM:
                typed: dict[str, Any] = network_filter["typed_config"]
                return typed
    raise BenchError(f"listener {listener.get('name')!r} has no http_connection_manager")


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _cluster(template: dict[str, Any], name: str, port: int) -> dict[str, Any]:
    cluster = copy.deepcopy(template)
    cluster["name"] = name
    cluster["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
    }
    return cluster


def _ext_authz(filters: list[dict[str, Any]]) -> dict[str, Any]:
    for http_filter in filters:
        if http_filter["name"] == EXT_AUTHZ:
            return http_filter
    raise BenchError("Envoy template has no ext_authz filter")


def http_authz_parts(port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ext_authz ``http_service`` filter of envoy-http.yaml and its cluster, pointed at ``port``."""
    template = yaml.safe_load(HTTP_TEMPLATE.read_text())
    resources = template["static_resources"]
    for listener in resources["listeners"]:
        for http_filter in _hcm(listener).get("http_filters", []):
            if http_filter["name"] == EXT_AUTHZ and "http_service" in http_filter["typed_config"]:
                found = copy.deepcopy(http_filter)
                server_uri = found["typed_config"]["http_service"]["server_uri"]
                cluster = _cluster(_named(resources["clusters"], server_uri["cluster"]), "authz_http", port)
                server_uri["cluster"] = "authz_http"
                server_uri["uri"] = f"http://{LOOPBACK}:{port}"
                return found, cluster
    raise BenchError(f"{HTTP_TEMPLATE.name} has no ext_authz filter with an http_service")


def envoy_config(stack: Stack, scenarios: list[Scenario]) -> dict[str, Any]:
    """One listener per scenario, each a copy of the template's ``ingress`` with a direct_response route."""
    config: dict[str, Any] = yaml.safe_load(processes.ENVOY_TEMPLATE.read_text())
    config["admin"]["address"] = _address(stack.envoy_admin)
    resources = config["static_resources"]
    ingress = _named(resources["listeners"], processes.INGRESS_LISTENER)
    grpc_cluster = _named(resources["clusters"], processes.SIDECAR_CLUSTER)
    listeners, clusters = [], []
    for scenario in scenarios:
        listener = copy.deepcopy(ingress)
        listener["name"] = scenario.name
        listener["address"] = _address(stack.listeners[scenario.name])
        hcm = _hcm(listener)
        hcm["stat_prefix"] = scenario.name
        hcm.pop("access_log", None)  # measured without per-request log I/O, as in the earlier runs
        hcm["route_config"] = {
            "name": scenario.name,
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
                    ],
                }
            ],
        }
        filters: list[dict[str, Any]] = hcm["http_filters"]
        authz = _ext_authz(filters)
        at = filters.index(authz)
        if scenario.kind == "none":
            filters.pop(at)
        elif scenario.kind == "grpc":
            assert scenario.backend is not None
            cluster_name = f"authz_{scenario.name}"
            authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster_name
            clusters.append(_cluster(grpc_cluster, cluster_name, stack.backends[scenario.backend].grpc_port))
        else:
            assert scenario.backend is not None
            http_port = stack.backends[scenario.backend].http_port
            assert http_port is not None
            http_filter, http_cluster = http_authz_parts(http_port)
            filters[at] = http_filter
            clusters.append(http_cluster)
        listeners.append(listener)
    resources["listeners"] = listeners
    resources["clusters"] = clusters
    return config


def envoy_counters(stack: Stack) -> dict[str, int]:
    """Envoy's ``http.<listener>.ext_authz.ok`` counters."""
    text = httpx.get(f"http://{LOOPBACK}:{stack.envoy_admin}/stats?filter=ext_authz", trust_env=False).text
    counters = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "http" and parts[2:] == ["ext_authz", "ok"]:
            counters[parts[1]] = int(value)
    return counters


@contextlib.contextmanager
def running_stack(workdir: Path, scenarios: list[Scenario], *, naive_uvloop: bool = True) -> Iterator[Stack]:
    valkey_port = processes.free_port()
    stack = Stack(
        workdir=workdir,
        redis_url=f"redis://{LOOPBACK}:{valkey_port}/0",
        valkey_port=valkey_port,
        envoy_admin=processes.free_port(),
        listeners={s.name: processes.free_port() for s in scenarios},
        backends={},
    )
    try:
        valkey = processes.start_valkey(valkey_port, workdir / "valkey", workdir / "valkey.log")
        stack.started.append(valkey)
        stack.pids["valkey"] = valkey.pid
        processes.wait_for_port(LOOPBACK, valkey_port, 20, proc=valkey, name="valkey")
        # Start every authz process at once, then wait for each (the Python processes take a second to start).
        wanted = {s.backend for s in scenarios}
        if "sidecar_hit" in wanted:
            stack.backends["sidecar_hit"] = start_sidecar(stack, "sidecar_hit", cache=True)
        if "sidecar_miss" in wanted:
            stack.backends["sidecar_miss"] = start_sidecar(stack, "sidecar_miss", cache=False)
        if "sidecar_http" in wanted:
            stack.backends["sidecar_http"] = start_sidecar(stack, "sidecar_http", cache=True)
        if "naive" in wanted:
            stack.backends["naive"] = start_naive(stack, uvloop=naive_uvloop)
        for backend in stack.backends.values():
            wait_up(backend, http=backend.name == "sidecar_http")
        config = workdir / "envoy.yaml"
        config.write_text(yaml.safe_dump(envoy_config(stack, scenarios), sort_keys=False))
        envoy = processes.start_envoy(config, workdir / "envoy.log")
        stack.started.append(envoy)
        stack.pids["envoy"] = envoy.pid
        for scenario in scenarios:
            processes.wait_for_port(LOOPBACK, stack.listeners[scenario.name], 20, proc=envoy, name="envoy")
        yield stack
    finally:
        for proc in reversed(stack.started):
            processes.stop(proc)


# --------------------------------------------------------------------------------------------------- sessions


def session_manager(store: RedisStore) -> SessionManager:
    # The key ring is the one the sidecars share through Valkey (token.keys is not configured).
    return SessionManager(
        store, KeyRingSource(store, None), cookie_name=COOKIE, idle_timeout=1800, absolute_timeout=43200
    )


async def create_session(redis_url: str, user: str) -> str:
    """A session every sidecar accepts, and the same token as a naive key; returns the token."""
    store = RedisStore.from_url(redis_url, KEY_PREFIX, timeout=2.0)
    raw = aioredis.from_url(redis_url)
    try:
        issued = await session_manager(store).create(user, email=f"{user}@example.com", roles=("dev",))
        await raw.set(f"naive:{issued.token}", user)
        return issued.token
    finally:
        await store.close()
        await raw.aclose()


def verify_edge(stack: Stack, scenarios: list[Scenario], cookie: str) -> None:
    """A request without a session is denied on every authz listener; with one it gets the direct_response."""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        for scenario in scenarios:
            url = f"http://{LOOPBACK}:{stack.listeners[scenario.name]}{URL_PATH}"
            allowed = client.get(url, headers={"Cookie": cookie})
            if allowed.status_code != 200 or allowed.text != "ok":
                raise BenchError(f"{scenario.name}: with a session: {allowed.status_code} {allowed.text[:200]!r}")
            if scenario.backend is None:
                continue
            denied = client.get(url)
            if denied.status_code != 401:
                raise BenchError(
                    f"{scenario.name}: without a session: {denied.status_code} (expected 401): the ext_authz filter "
                    "was not consulted before the direct_response route"
                )


# --------------------------------------------------------------------------------------------------- wrk

LUA = """\
-- generated by bench/throughput.py
local cookie = {cookie}
local think = {think}
wrk.headers["Cookie"] = cookie
if think > 0 then
  -- pacing: a think time per connection (ms, randomly rounded so the mean is exact)
  local base = math.floor(think)
  local extra = think - base
  function delay()
    if math.random() < extra then return base + 1 end
    return base
  end
end
function done(summary, latency, requests)
  local q = {{}}
  for k = 1, {quantiles} do q[k] = string.format("%d", latency:percentile(k * 100 / {quantiles})) end
  local e = summary.errors
  io.write(string.format('WRK_JSON {{"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"socket_errors": %d, "timeouts": %d, "quantiles_us": [%s]}}\\n', summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write, e.timeout, table.concat(q, ",")))
end
"""


@dataclass
class Run:
    requests: int
    seconds: float
    status_errors: int
    socket_errors: int
    quantiles_us: list[float]
    authz_ok: int | None = None  # Envoy's ext_authz.ok counter over the run
    commands: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process over the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def run_wrk(
    stack: Stack,
    scenario: Scenario,
    cookie: str,
    *,
    connections: int,
    seconds: int,
    think_ms: float = 0.0,
    stats: redis.Redis | None = None,
) -> Run:
    script = stack.workdir / f"wrk-{scenario.name}.lua"
    script.write_text(LUA.format(cookie=json.dumps(cookie), think=f"{think_ms:.4f}", quantiles=QUANTILES))
    url = f"http://{LOOPBACK}:{stack.listeners[scenario.name]}{URL_PATH}"
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", "-s", str(script), url]
    before = envoy_counters(stack)
    if stats is not None:
        stats.config_resetstat()
    watched = dict(stack.pids)
    if scenario.backend is not None:
        watched["authz"] = stack.backends[scenario.backend].proc.pid
    cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    wrk_before = children_cpu_seconds()
    busy_before = machine_busy_seconds()
    done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30, check=False)
    busy = machine_busy_seconds() - busy_before
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
    cpu["wrk"] = children_cpu_seconds() - wrk_before
    cpu["other"] = max(0.0, busy - sum(cpu.values()))  # every other process (and the kernel's own threads)
    commands = {}
    if stats is not None:
        info = stats.info("commandstats")
        commands = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}
        commands.pop("config|resetstat", None)
    after = envoy_counters(stack)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed on {scenario.name} ({done.returncode}): {done.stderr.strip() or done.stdout}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    result = Run(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        status_errors=data["status_errors"],
        socket_errors=data["socket_errors"] + data["timeouts"],
        quantiles_us=[float(q) for q in data["quantiles_us"]],
        commands=commands,
        cpu=cpu,
    )
    if scenario.backend is not None:
        result.authz_ok = after.get(scenario.name, 0) - before.get(scenario.name, 0)
    return result


@dataclass
class Merged:
    runs: list[Run]

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.runs)

    @property
    def allowed(self) -> int:
        return sum(r.requests - r.status_errors for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.status_errors + r.socket_errors for r in self.runs)

    @property
    def rps(self) -> float:
        return self.requests / sum(r.seconds for r in self.runs)

    @property
    def authz_ok(self) -> int | None:
        counts = [r.authz_ok for r in self.runs]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)

    def percentile_ms(self, p: float) -> float:
        """The merged percentile: each run's quantiles weighted by its request count."""
        points = sorted(
            (q, run.requests / len(run.quantiles_us)) for run in self.runs if run.requests for q in run.quantiles_us
        )
        goal = p / 100 * sum(weight for _, weight in points)
        total = 0.0
        for value, weight in points:
            total += weight
            if total >= goal - 1e-9:
                return value / 1000
        return points[-1][0] / 1000

    def cpu_percent(self, name: str) -> float | None:
        """A process's CPU use over the runs, in % of one core."""
        if any(name not in run.cpu for run in self.runs):
            return None
        return 100 * sum(run.cpu[name] for run in self.runs) / sum(run.seconds for run in self.runs)

    def commands(self) -> dict[str, int]:
        summed: dict[str, int] = {}
        for run in self.runs:
            for name, calls in run.commands.items():
                summed[name] = summed.get(name, 0) + calls
        return summed


# --------------------------------------------------------------------------------------------------- phases


def saturation(
    stack: Stack, scenarios: list[Scenario], cookie: str, args: argparse.Namespace, stats: redis.Redis
) -> dict[str, Merged]:
    for scenario in scenarios:  # warm-up (discarded): connections, caches, the sidecars' key ring
        run_wrk(stack, scenario, cookie, connections=args.connections, seconds=args.warmup)
    merged = {s.name: Merged([]) for s in scenarios}
    for _ in range(args.rounds):
        for scenario in scenarios:
            run = run_wrk(stack, scenario, cookie, connections=args.connections, seconds=args.duration, stats=stats)
            merged[scenario.name].runs.append(run)
            log(f"  {scenario.name:10} {run.rps:9.0f} req/s  p99 {run.quantiles_us[989] / 1000:.2f} ms")
    return merged


@dataclass
class Paced:
    scenario: Scenario
    rate: float  # the target: half the saturated rate
    connections: int
    think: dict[str, float]  # per listener: the calibrated think time (ms)
    measured: Merged
    alone: Merged


def calibrate(stack: Stack, scenario: Scenario, cookie: str, rate: float, connections: int, seconds: int) -> float:
    """The think time (ms) that makes ``connections`` paced connections send ``rate`` requests/s in total."""
    cycle = connections * 1000 / rate  # ms between two requests of one connection
    think = max(0.0, cycle - 0.5)
    probe = run_wrk(stack, scenario, cookie, connections=connections, seconds=seconds, think_ms=think)
    overhead = connections * 1000 / max(probe.rps, 1.0) - think  # latency + timer slack, by Little's law
    return max(0.0, cycle - overhead)


def half_saturation(
    stack: Stack, targets: list[Scenario], sat: dict[str, Merged], cookie: str, args: argparse.Namespace
) -> list[Paced]:
    plans = []
    for scenario in targets:
        rate = sat[scenario.name].rps / 2
        connections = max(8, math.ceil(rate * HALF_CYCLE_MS / 1000))
        paces = {
            name: calibrate(stack, s, cookie, rate, connections, args.calibration)
            for name, s in ((scenario.name, scenario), (ALONE.name, ALONE))
        }
        plans.append(Paced(scenario, rate, connections, paces, Merged([]), Merged([])))
    for _ in range(args.rounds):
        for plan in plans:
            for s, into in ((plan.scenario, plan.measured), (ALONE, plan.alone)):
                think = plan.think[s.name]
                run = run_wrk(
                    stack, s, cookie, connections=plan.connections, seconds=args.half_duration, think_ms=think
                )
                into.runs.append(run)
                # Correct the pace for the next round from what this run achieved (Little's law again).
                overhead = plan.connections * 1000 / max(run.rps, 1.0) - think
                plan.think[s.name] = max(0.0, plan.connections * 1000 / plan.rate - overhead)
            log(
                f"  {plan.scenario.name:10} @ {plan.rate:6.0f}/s: {plan.measured.runs[-1].rps:6.0f} req/s "
                f"p99 {plan.measured.runs[-1].quantiles_us[989] / 1000:.2f} ms; alone {plan.alone.runs[-1].rps:6.0f} "
                f"req/s p99 {plan.alone.runs[-1].quantiles_us[989] / 1000:.2f} ms"
            )
    return plans


def check_request(cookie: str) -> Any:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.scheme, http.host, http.path = "GET", "http", "bench", URL_PATH
    http.header_map.headers.append(base_pb2.HeaderValue(key="cookie", raw_value=cookie.encode()))
    return request


@dataclass
class Revocations:
    delays_ms: list[float]  # revoke sent → the second sidecar's first denial (verified cache hits only)
    samples: int
    cached: int  # samples where the second sidecar answered from its cache before the revoke
    polls: list[int]


async def revocation(redis_url: str, first: Backend, second: Backend, samples: int) -> Revocations:
    store = RedisStore.from_url(redis_url, KEY_PREFIX, timeout=2.0)  # the third client; no replicas to WAIT for
    manager = session_manager(store)
    raw = aioredis.from_url(redis_url)
    channels = [grpc.aio.insecure_channel(f"{LOOPBACK}:{b.grpc_port}") for b in (first, second)]
    stub_a, stub_b = (external_auth_pb2_grpc.AuthorizationStub(c) for c in channels)

    async def allowed(stub: Any, request: Any) -> bool:
        reply = await stub.Check(request, timeout=2)
        return bool(reply.status.code == code_pb2.OK)

    async def answers_from_cache(request: Any) -> bool:
        await raw.config_resetstat()
        if not await allowed(stub_b, request):
            raise BenchError("revocation: the second sidecar denied a live session")
        stats = await raw.info("commandstats")
        return "cmdstat_evalsha" not in stats  # a resolve is one EVALSHA; a cache hit sends none

    result = Revocations([], samples, 0, [])
    try:
        # The caches serve hits only once their invalidation subscription is up: wait for that first.
        token = (await manager.create("revoke-warm")).token
        warm = check_request(f"{COOKIE}={token}")
        deadline = time.monotonic() + 10
        while not await answers_from_cache(warm):
            if time.monotonic() > deadline:
                raise BenchError("revocation: the second sidecar never answered from its cache")
            await asyncio.sleep(0.1)
        for i in range(samples):
            token = (await manager.create(f"revoke-{i}")).token
            request = check_request(f"{COOKIE}={token}")
            if not (await allowed(stub_a, request) and await allowed(stub_b, request)):
                raise BenchError("revocation: a new session was denied")
            cached = await answers_from_cache(request)
            sent = time.perf_counter()
            await manager.revoke(token)
            polls = 0
            while True:
                polls += 1
                if not await allowed(stub_b, request):
                    denied = time.perf_counter()
                    break
                if time.perf_counter() - sent > 5:
                    raise BenchError("revocation: the second sidecar still allows a revoked session after 5 s")
                await asyncio.sleep(0.001)
            if await allowed(stub_a, request):
                raise BenchError("revocation: the first sidecar still allows a revoked session")
            if cached:
                result.cached += 1
                result.delays_ms.append((denied - sent) * 1000)
                result.polls.append(polls)
    finally:
        for channel in channels:
            await channel.close(None)
        await store.close()
        await raw.aclose()
    return result


# --------------------------------------------------------------------------------------------------- report


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    nproc = len(os.sched_getaffinity(0))
    return (
        f"nproc {nproc} ({model}), {platform.system()} {platform.release()} {platform.machine()}, "
        f"load average at the start {load}"
    )


def met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


@dataclass
class Measured:
    scenarios: list[Scenario]
    sat: dict[str, Merged]
    paced: list[Paced]
    rss: dict[str, float]
    revocations: Revocations
    versions: dict[str, str]
    http_note: str
    seconds: float
    machine: str


def disturbance(m: Measured) -> str:
    """How much CPU processes outside the bench took during the measured runs."""
    runs = [run for merged in m.sat.values() for run in merged.runs]
    runs += [run for plan in m.paced for merged in (plan.measured, plan.alone) for run in merged.runs]
    shares = [100 * run.cpu.get("other", 0.0) / run.seconds for run in runs]
    mean = sum(shares) / max(len(shares), 1)
    text = (
        f"other processes on the machine: {mean:.0f} % of a core on average during the runs, "
        f"{max(shares):.0f} % at most"
    )
    if mean > 25:
        return f"**{text}: the machine was not quiet, so absolute numbers are low and noisy** (ratios less so)"
    return text + " (a quiet machine)"


def commands_text(commands: dict[str, int]) -> str:
    return ", ".join(f"{name.upper()} {calls}" for name, calls in sorted(commands.items(), key=lambda kv: -kv[1]))


def report(m: Measured, args: argparse.Namespace) -> str:
    sat = m.sat
    alone = sat[ALONE.name]
    lines = [
        "# Throughput of the ext_authz paths (issue #5)",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; whole run {m.seconds:.0f} s "
        "(`python bench/throughput.py`, part of `make bench`)",
        f"- machine: {m.machine} (load generator, Envoy, the authz processes and Valkey all share it); "
        f"load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m.versions.items()),
        f"- load: {m.versions['wrk']} `-t1 -c{args.connections}`, keep-alive GETs with the session cookie (Lua "
        "script); Envoy with 1 worker; every listener answers with a `direct_response` route (no upstream), "
        "the ext_authz filter copied from `mesh-config/envoy/envoy.yaml`"
        + (" / `envoy-http.yaml`" if HTTP_HIT in m.scenarios else ""),
        "- the filter runs before the router: on every authz listener a request without a cookie got 401 and "
        "Envoy's `ext_authz.ok` counter moved with wrk's request count (column *authz OK*)",
        f"- runs interleaved: {args.rounds} rounds, each runs every scenario once ({args.duration} s each, after a "
        f"{args.warmup} s warm-up per scenario); percentiles merged over the rounds from wrk's quantiles at "
        "0.1 % steps",
        f"- HTTP mode: {m.http_note}; the naive baseline runs on "
        + ("plain asyncio (`--naive-asyncio`)" if args.naive_asyncio else "uvloop, like `sidecar serve`"),
        f"- {disturbance(m)}",
        "",
        "## Saturation (closed loop)",
        "",
        "| scenario | req/s | vs Envoy alone | p50 ms | p99 ms | requests | errors | authz OK (Envoy) "
        "| CPU % authz / Envoy / wrk / Valkey / other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in m.scenarios:
        r = sat[s.name]
        ok = "-" if r.authz_ok is None else f"{r.authz_ok:,}"
        cpu = " / ".join(
            "-" if (v := r.cpu_percent(name)) is None else f"{v:.0f}"
            for name in ("authz", "envoy", "wrk", "valkey", "other")
        )
        lines.append(
            f"| {s.label} | {r.rps:,.0f} | {r.rps / alone.rps:.3f} | {r.percentile_ms(50):.2f} "
            f"| {r.percentile_ms(99):.2f} | {r.requests:,} | {r.errors} | {ok} | {cpu} |"
        )
    lines += [
        "",
        "CPU is each process's user + system time over the measured runs (`/proc/PID/stat`; wrk from `getrusage`), "
        f"in % of one core (the machine has {os.cpu_count()}); *other* is the rest of the machine's user + system "
        "(+ steal) time in `/proc/stat`: processes that are not part of the bench. Much *other* means the numbers "
        "are disturbed.",
    ]
    lines += [
        "",
        "## Latency at about half saturation (paced)",
        "",
        "wrk2 is not in Debian: each connection pauses (Lua `delay()`, a think time calibrated by a "
        f"{args.calibration} s probe) so the total rate is about half the scenario's saturated rate; Envoy alone is "
        f"run at the same rate and connection count, interleaved with it ({args.rounds} rounds x "
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
    lines += [
        "",
        "## Redis commands per allowed request (saturation runs)",
        "",
        "`CONFIG RESETSTAT` before and `INFO commandstats` after every measured run, summed over the rounds. The "
        "counts include every process's background traffic: the `PING`s of each sidecar's store health probe and "
        "of its invalidation channel's liveness check (cache on only). `HELLO` and `CLIENT SETINFO` are new "
        "connections being opened (a pool growing when many requests miss at once); `HMGET`, `HSET` and "
        "`PEXPIREAT` run inside the "
        "`EVALSHA` scripts and cost no round trip.",
        "",
        "| scenario | allowed requests | Redis commands | commands per allowed request | round trips per allowed "
        "request |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for s in m.scenarios:
        if s.backend is None:
            continue
        r = sat[s.name]
        commands = r.commands()
        per = sum(commands.values()) / max(r.allowed, 1)
        sent = sum(calls for name, calls in commands.items() if name not in SCRIPT_INNER) / max(r.allowed, 1)
        lines.append(f"| {s.label} | {r.allowed:,} | {commands_text(commands)} | {per:.4f} | {sent:.4f} |")
    lines += [
        "",
        "## Memory after the runs",
        "",
        "| process | VmRSS MiB |",
        "| --- | ---: |",
        *(f"| {name} | {value:.1f} |" for name, value in m.rss.items()),
    ]
    rev = m.revocations
    rev_p50 = nearest_rank(rev.delays_ms, 50) if rev.delays_ms else math.nan
    rev_p99 = nearest_rank(rev.delays_ms, 99) if rev.delays_ms else math.nan
    lines += [
        "",
        "## Revocation propagation to a second sidecar",
        "",
        "Two more sidecar processes (cache on) on the same Valkey. Per sample: a new session, one gRPC Check on "
        "each (direct, no Envoy), a second Check on the second sidecar verified to be a cache hit (no `EVALSHA` "
        "in commandstats), a revoke by this process (a third client, `SessionManager.revoke`), then the second "
        "sidecar is polled with Check every 1 ms until it denies; the first one is checked to deny too. Time is "
        "from sending the revoke to the first denial (so it includes the revoke's own round trip); percentiles "
        "by nearest rank, so with 50 samples the p99 is the largest.",
        "",
        "| samples (cache hit before revoke) | p50 ms | p99 ms | max ms | polls p50 |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {rev.cached} of {rev.samples} | {rev_p50:.2f} | {rev_p99:.2f} | "
        f"{max(rev.delays_ms, default=math.nan):.2f} | {nearest_rank([float(p) for p in rev.polls], 50):.0f} |",
    ]
    # Targets.
    grpc_hit = sat[GRPC_HIT.name]
    naive = sat[NAIVE.name]
    http = sat.get(HTTP_HIT.name)
    paced = {p.scenario.name: p for p in m.paced}

    def added_p99(name: str) -> float | None:
        plan = paced.get(name)
        return None if plan is None else plan.measured.percentile_ms(99) - plan.alone.percentile_ms(99)

    def per_request(r: Merged | None) -> float | None:
        return None if r is None else sum(r.commands().values()) / max(r.allowed, 1)

    grpc_ratio = grpc_hit.rps / naive.rps
    http_ratio = None if http is None else http.rps / alone.rps
    added_grpc, added_http = added_p99(GRPC_HIT.name), added_p99(HTTP_HIT.name)
    cmd_grpc, cmd_http = per_request(grpc_hit), per_request(http)

    def fmt(value: float | None, pattern: str) -> str:
        return "n/a (no HTTP mode)" if value is None else pattern.format(value)

    rows = [
        ("gRPC cache hit ÷ naive, req/s", f"≥ {TARGET_GRPC_VS_NAIVE}", f"{grpc_ratio:.2f}",
         grpc_ratio >= TARGET_GRPC_VS_NAIVE),
        ("HTTP cache hit ÷ Envoy alone, req/s", f"≥ {TARGET_HTTP_VS_ENVOY}", fmt(http_ratio, "{:.3f}"),
         None if http_ratio is None else http_ratio >= TARGET_HTTP_VS_ENVOY),
        ("added p99 at ~half saturation, gRPC (cache hit)", f"≤ {TARGET_ADDED_P99_GRPC_MS} ms",
         fmt(added_grpc, "{:.2f} ms"), None if added_grpc is None else added_grpc <= TARGET_ADDED_P99_GRPC_MS),
        ("added p99 at ~half saturation, HTTP (cache hit)", f"≤ {TARGET_ADDED_P99_HTTP_MS} ms",
         fmt(added_http, "{:.2f} ms"), None if added_http is None else added_http <= TARGET_ADDED_P99_HTTP_MS),
        ("Redis commands per allowed request, gRPC cache hit", f"≤ {TARGET_COMMANDS_PER_REQUEST}",
         fmt(cmd_grpc, "{:.4f}"), None if cmd_grpc is None else cmd_grpc <= TARGET_COMMANDS_PER_REQUEST),
        ("Redis commands per allowed request, HTTP cache hit", f"≤ {TARGET_COMMANDS_PER_REQUEST}",
         fmt(cmd_http, "{:.4f}"), None if cmd_http is None else cmd_http <= TARGET_COMMANDS_PER_REQUEST),
        ("revocation seen by a second sidecar, p99", f"≤ {TARGET_REVOCATION_P99_MS:.0f} ms", f"{rev_p99:.2f} ms",
         bool(rev.delays_ms) and rev_p99 <= TARGET_REVOCATION_P99_MS),
    ]  # fmt: skip
    lines += [
        "",
        "## Targets",
        "",
        "| target | wanted | measured | |",
        "| --- | ---: | ---: | --- |",
        *(f"| {name} | {wanted} | {value} | {met(ok)} |" for name, wanted, value, ok in rows),
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- main


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
    missing = [p.relative_to(REPO).as_posix() for p in (HTTP_ADAPTER, HTTP_TEMPLATE) if not p.exists()]
    if missing:
        return False, "not measured: " + ", ".join(missing) + " missing in this checkout"
    return True, "measured (`listen.http`, Envoy `http_service` from `mesh-config/envoy/envoy-http.yaml`)"


def versions(stack: Stack) -> dict[str, str]:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        server = client.info("server")
    finally:
        client.close()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    wrk_line = (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else "wrk"
    return {
        "session-sidecar": version("session-sidecar"),
        "Envoy": processes.envoy_version(),
        "Valkey": str(server.get("valkey_version") or server.get("redis_version")),
        "wrk": " ".join(wrk_line.split()[:2]),
        "Python": platform.python_version(),
        "grpcio": version("grpcio"),
        "redis-py": version("redis"),
        "hiredis": version("hiredis"),
        "uvloop": version("uvloop"),
    }


def measure(workdir: Path, args: argparse.Namespace, with_http: bool, started: float) -> Measured:
    scenarios = [ALONE, GRPC_HIT, GRPC_MISS, NAIVE] + ([HTTP_HIT] if with_http else [])
    quiet = wait_for_quiet(args.quiet_wait)
    machine_at_start = f"{machine()}, {quiet}"
    with running_stack(workdir, scenarios, naive_uvloop=not args.naive_asyncio) as stack:
        token = asyncio.run(create_session(stack.redis_url, "bench"))
        cookie = f"{COOKIE}={token}"
        verify_edge(stack, scenarios, cookie)
        stats = redis.Redis.from_url(stack.redis_url)
        try:
            log(f"saturation: {args.rounds} rounds x {len(scenarios)} scenarios x {args.duration} s")
            sat = saturation(stack, scenarios, cookie, args, stats)
        finally:
            stats.close()
        for s in scenarios:
            ok = sat[s.name].authz_ok
            if ok is not None and ok < 0.99 * sat[s.name].requests:
                raise BenchError(f"{s.name}: Envoy counted {ok} ext_authz OKs for {sat[s.name].requests} requests")
        targets = [s for s in (GRPC_HIT, HTTP_HIT, GRPC_MISS, NAIVE) if s in scenarios]
        log(f"half saturation: {len(targets)} scenarios and Envoy alone at their rates")
        paced = half_saturation(stack, targets, sat, cookie, args)
        labels = {"sidecar_hit": "sidecar (gRPC, cache hit)", "sidecar_miss": "sidecar (gRPC, cache off)",
                  "sidecar_http": "sidecar (HTTP, cache hit)", "naive": "naive_authz.py"}  # fmt: skip
        rss = {labels[b.name]: rss_mib(b.proc.pid) for b in stack.backends.values()}
        log(f"revocation: {args.revocations} samples")
        first, second = (start_sidecar(stack, name, cache=True) for name in ("revoke_a", "revoke_b"))
        wait_up(first)
        wait_up(second)
        revocations = asyncio.run(revocation(stack.redis_url, first, second, args.revocations))
        found = versions(stack)
    return Measured(
        scenarios, sat, paced, rss, revocations, found, http_mode()[1], time.monotonic() - started, machine_at_start
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ext_authz throughput, latency and Redis cost (make bench)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per saturation run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every scenario")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of discarded warm-up per scenario")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections at saturation")
    parser.add_argument("--half-duration", type=int, default=3, help="seconds per paced run")
    parser.add_argument("--calibration", type=int, default=2, help="seconds of the paced runs' calibration probe")
    parser.add_argument("--revocations", type=int, default=50)
    parser.add_argument("--quiet-wait", type=float, default=45, help="max seconds to wait for an idle machine")
    parser.add_argument("--naive-asyncio", action="store_true", help="run the naive baseline without uvloop")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP mode even when it exists")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        print("error: wrk is missing: run 'sudo apt-get install wrk' (or `make bench` as root)", file=sys.stderr)
        return 1
    with_http, note = http_mode()
    with_http = with_http and not args.no_http
    log(f"HTTP mode: {note if with_http or not args.no_http else 'skipped (--no-http)'}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="session-sidecar-throughput-") as tmp:
        workdir = Path(tmp)
        try:
            measured = measure(workdir, args, with_http, started)
        except (BenchError, processes.ProcessError, httpx.HTTPError, redis.RedisError, grpc.RpcError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            for log_file in sorted(workdir.glob("*.log")):
                print(f"--- {log_file.name} ---\n{log_file.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
    if args.no_http:
        measured.http_note = "skipped (--no-http)"
    text = report(measured, args)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
