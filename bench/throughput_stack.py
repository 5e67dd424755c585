"""The stack of ``bench/throughput.py``: its scenarios, the processes behind them and the one Envoy in front.

Every process binds 127.0.0.1 on a free port and is stopped when ``running_stack`` ends, whatever happened.
CPU time, RSS and the machine's busy time are read from /proc, so they can be taken around each wrk run.
"""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the process helpers live in tests/support, shared with the tests

from tests.support import processes  # noqa: E402

BENCH = Path(__file__).resolve().parent
HTTP_ADAPTER = ROOT / "sidecar" / "authz" / "http.py"
HTTP_TEMPLATE = ROOT / "mesh-config" / "envoy" / "envoy-http.yaml"
LOOPBACK = processes.LOOPBACK
EXT_AUTHZ = processes.EXT_AUTHZ_FILTER
HCM = "envoy.filters.network.http_connection_manager"
KEY_PREFIX = "sidecar:"
URL_PATH = "/bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The application secret the Express scenario's cookie is signed with (express-session's `secret`).
EXPRESS_SECRET = "bench-express-secret"


class BenchError(RuntimeError):
    """The bench could not measure what it should (a process, a check or a run failed)."""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Scenario:
    name: str  # listener, Envoy stat prefix
    label: str
    backend: str | None  # the authz process behind it; None: Envoy alone
    kind: str  # "none", "grpc" or "http"
    session: str = "native"  # the cookie sent: "native", "spring" or "express" (throughput_sessions)
    reads_session: bool = True  # a cookie naming no session is denied (False: the constant-answer servers)


ALONE = Scenario("alone", "Envoy alone (direct_response)", None, "none", reads_session=False)
GRPC_HIT = Scenario("grpc_hit", "sidecar gRPC, cache hit", "sidecar_hit", "grpc")
GRPC_MISS = Scenario("grpc_miss", "sidecar gRPC, cache off (miss)", "sidecar_miss", "grpc")
NAIVE = Scenario("naive", "naive grpc.aio + Redis GET", "naive", "grpc")
CONST_GRPC = Scenario("const_grpc", "constant sync gRPC (4 threads)", "const_grpc", "grpc", reads_session=False)
HTTP_HIT = Scenario("http_hit", "sidecar HTTP, cache hit", "sidecar_http", "http")
# The same, Envoy reaching the sidecar over unix sockets (listen.grpc / listen.http: unix:/path), one process.
GRPC_HIT_UNIX = Scenario("grpc_hit_unix", "sidecar gRPC over a unix socket, cache hit", "sidecar_unix", "grpc")
HTTP_HIT_UNIX = Scenario("http_hit_unix", "sidecar HTTP over a unix socket, cache hit", "sidecar_unix", "http")
CONST_HTTP = Scenario("const_http", "constant uvloop + httptools HTTP", "const_http", "http", reads_session=False)
SPRING = Scenario("spring", "sidecar gRPC, Spring Session (uncached)", "sidecar_sources", "grpc", session="spring")
EXPRESS = Scenario("express", "sidecar gRPC, Express (uncached)", "sidecar_sources", "grpc", session="express")

# What each authz process is, in the memory table.
BACKEND_LABELS = {
    "sidecar_hit": "sidecar (gRPC, cache hit)",
    "sidecar_miss": "sidecar (gRPC, cache off)",
    "sidecar_http": "sidecar (HTTP, cache hit)",
    "sidecar_unix": "sidecar (gRPC and HTTP on unix sockets, cache hit)",
    "sidecar_sources": "sidecar (gRPC, sources native + spring-session + express)",
    "naive": "naive_authz.py",
    "const_grpc": "constant_grpc.py",
    "const_http": "constant_http.py",
}


# --------------------------------------------------------------------------------------------------- processes


@dataclass
class Backend:
    name: str
    proc: subprocess.Popen[bytes]
    grpc_port: int | None
    http_port: int | None = None
    grpc_socket: Path | None = None  # listen.grpc / listen.http as unix:/path (then the ports are None)
    http_socket: Path | None = None


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
    cookies: dict[str, str] = field(default_factory=dict)  # per session kind: the Cookie header of a live session

    def cookie(self, scenario: Scenario) -> str:
        return self.cookies[scenario.session]


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


def sources_config(workdir: Path) -> Path:
    """A config file with ``sources``: native first, then Spring Session and Express on the sidecar's Valkey."""
    secrets = workdir / "express-secrets"
    secrets.write_text(EXPRESS_SECRET + "\n")
    config = workdir / "sources.yaml"
    sources = [{"kind": "native"}, {"kind": "spring-session"}, {"kind": "express", "secrets_file": str(secrets)}]
    config.write_text(yaml.safe_dump({"sources": sources}))
    return config


def start_sidecar(stack: Stack, name: str, *, cache: bool, config: Path | None = None, unix: bool = False) -> Backend:
    grpc_port, http_port, admin_port = (processes.free_port() for _ in range(3))
    env = sidecar_env(stack.redis_url, cache=cache, grpc=grpc_port, http=http_port, admin=admin_port)
    sockets: tuple[Path | None, Path | None] = (None, None)
    if unix:
        sockets = (stack.workdir / f"{name}-grpc.sock", stack.workdir / f"{name}-http.sock")
        env["SIDECAR_LISTEN__GRPC"], env["SIDECAR_LISTEN__HTTP"] = (f"unix:{path}" for path in sockets)
    proc = processes.start_sidecar(env=env, config=config, log_path=stack.workdir / f"{name}.log", hermetic=True)
    stack.started.append(proc)
    if unix:
        return Backend(name, proc, None, None, *sockets)
    return Backend(name, proc, grpc_port, http_port)


def start_script(stack: Stack, name: str, script: str, *extra: str, http: bool = False) -> Backend:
    """One of the bench's own servers (``bench/<script>``) on a free port."""
    port = processes.free_port()
    log_file = (stack.workdir / f"{name}.log").open("ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / script), "--port", str(port), *extra],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )
    finally:
        log_file.close()
    stack.started.append(proc)
    return Backend(name, proc, None, port) if http else Backend(name, proc, port)


def start_backend(stack: Stack, name: str, *, naive_uvloop: bool) -> Backend:
    if name == "sidecar_hit":
        return start_sidecar(stack, name, cache=True)
    if name == "sidecar_miss":
        return start_sidecar(stack, name, cache=False)
    if name == "sidecar_http":
        return start_sidecar(stack, name, cache=True)
    if name == "sidecar_unix":
        return start_sidecar(stack, name, cache=True, unix=True)
    if name == "sidecar_sources":
        return start_sidecar(stack, name, cache=True, config=sources_config(stack.workdir))
    if name == "naive":
        return start_script(
            stack, name, "naive_authz.py", "--redis", stack.redis_url, *([] if naive_uvloop else ["--no-uvloop"])
        )
    if name == "const_grpc":
        return start_script(stack, name, "constant_grpc.py", "--threads", "4")
    if name == "const_http":
        return start_script(stack, name, "constant_http.py", http=True)
    raise BenchError(f"no such authz backend: {name}")


def wait_for_socket(path: Path, backend: Backend) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if backend.proc.poll() is not None:
            raise BenchError(f"{backend.name} exited with {backend.proc.returncode} before listening on {path}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(path))
            return
        time.sleep(0.05)
    raise BenchError(f"{backend.name}: nothing listens on {path} after 30 s")


def wait_up(backend: Backend, *, http: bool = False) -> None:
    for path in (backend.grpc_socket, backend.http_socket):
        if path is not None:
            wait_for_socket(path, backend)
    if backend.grpc_port is not None:
        processes.wait_for_port(LOOPBACK, backend.grpc_port, 30, proc=backend.proc, name=backend.name)
    if backend.http_port is not None and (http or backend.grpc_port is None):
        processes.wait_for_port(LOOPBACK, backend.http_port, 30, proc=backend.proc, name=f"{backend.name} (http)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (/proc/PID/stat)."""
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


def _cluster(template: dict[str, Any], name: str, at: int | Path) -> dict[str, Any]:
    """A copy of ``template`` named ``name`` whose one endpoint is loopback port ``at`` or the unix socket ``at``."""
    cluster = copy.deepcopy(template)
    cluster["name"] = name
    address = {"pipe": {"path": str(at)}} if isinstance(at, Path) else _address(at)
    cluster["load_assignment"] = {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
    }
    return cluster


def _ext_authz(filters: list[dict[str, Any]]) -> dict[str, Any]:
    for http_filter in filters:
        if http_filter["name"] == EXT_AUTHZ:
            return http_filter
    raise BenchError("Envoy template has no ext_authz filter")


def http_authz_parts(name: str, port: int | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ext_authz ``http_service`` filter of envoy-http.yaml and its cluster (named ``name``), at ``port`` (or
    a unix socket)."""
    template = yaml.safe_load(HTTP_TEMPLATE.read_text())
    resources = template["static_resources"]
    for listener in resources["listeners"]:
        for http_filter in _hcm(listener).get("http_filters", []):
            if http_filter["name"] == EXT_AUTHZ and "http_service" in http_filter["typed_config"]:
                found = copy.deepcopy(http_filter)
                server_uri = found["typed_config"]["http_service"]["server_uri"]
                cluster = _cluster(_named(resources["clusters"], server_uri["cluster"]), name, port)
                server_uri["cluster"] = name
                server_uri["uri"] = f"http://{LOOPBACK}:{port}" if isinstance(port, int) else "http://sidecar"
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
        cluster_name = f"authz_{scenario.name}"
        if scenario.kind == "none":
            filters.pop(at)
        elif scenario.kind == "grpc":
            assert scenario.backend is not None
            backend = stack.backends[scenario.backend]
            grpc_port = backend.grpc_port if backend.grpc_socket is None else backend.grpc_socket
            assert grpc_port is not None
            authz["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster_name
            clusters.append(_cluster(grpc_cluster, cluster_name, grpc_port))
        else:
            assert scenario.backend is not None
            backend = stack.backends[scenario.backend]
            http_port = backend.http_port if backend.http_socket is None else backend.http_socket
            assert http_port is not None
            http_filter, http_cluster = http_authz_parts(cluster_name, http_port)
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


# What a failed run can raise; the bench says what failed and shows the processes' logs instead of a traceback.
BENCH_ERRORS: tuple[type[Exception], ...] = (
    BenchError,
    processes.ProcessError,
    httpx.HTTPError,
    redis.RedisError,
    grpc.RpcError,
    OSError,
)


def show_failure(workdir: Path, exc: Exception) -> None:
    print(f"error: {exc}", file=sys.stderr)
    for log_file in sorted(workdir.glob("*.log")):
        print(f"--- {log_file.name} ---\n{log_file.read_text(errors='replace')[-2000:]}", file=sys.stderr)


def start_scenario_backends(scenarios: list[Scenario], *, naive_uvloop: bool = True) -> Callable[[Stack], None]:
    """The authz process of every scenario, started at once, then waited for (each takes a second to start)."""

    def start(stack: Stack) -> None:
        for name in dict.fromkeys(s.backend for s in scenarios if s.backend is not None):
            stack.backends[name] = start_backend(stack, name, naive_uvloop=naive_uvloop)
        http_backends = {s.backend for s in scenarios if s.kind == "http"}
        for backend in stack.backends.values():
            wait_up(backend, http=backend.name in http_backends)

    return start


@contextlib.contextmanager
def running_stack(workdir: Path, scenarios: list[Scenario], start_backends: Callable[[Stack], None]) -> Iterator[Stack]:
    """Valkey, the authz processes ``start_backends`` starts (into ``stack.backends``) and one Envoy with a
    listener per scenario; every process is stopped on the way out, whatever happened."""
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
        start_backends(stack)
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


def verify_edge(stack: Stack, scenarios: list[Scenario], bogus: dict[str, str]) -> None:
    """On every listener a live session gets the direct_response; on every authz listener a request without a
    cookie is denied, and where the backend reads sessions so is a cookie naming none (``bogus``, per kind)."""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        for scenario in scenarios:
            url = f"http://{LOOPBACK}:{stack.listeners[scenario.name]}{URL_PATH}"
            allowed = client.get(url, headers={"Cookie": stack.cookie(scenario)})
            if allowed.status_code != 200 or allowed.text != "ok":
                raise BenchError(f"{scenario.name}: with a session: {allowed.status_code} {allowed.text[:200]!r}")
            if scenario.backend is None or scenario.backend == "const_grpc":
                continue  # Envoy alone allows all; the constant gRPC server reads nothing
            denied = client.get(url)
            if denied.status_code != 401:
                raise BenchError(
                    f"{scenario.name}: without a session: {denied.status_code} (expected 401): the ext_authz filter "
                    "was not consulted before the direct_response route"
                )
            if scenario.reads_session:
                unknown = client.get(url, headers={"Cookie": bogus[scenario.session]})
                if unknown.status_code != 401:
                    raise BenchError(f"{scenario.name}: a cookie naming no session got {unknown.status_code}")
