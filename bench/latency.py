"""``make bench``: the latency the sidecar adds to a request, measured through a real Envoy.

Starts Valkey, the sidecar, the echo upstream and one Envoy with two listeners on the same upstream:
``ingress`` (with the ext_authz filter → sidecar → Valkey) and ``direct`` (the same listener without ext_authz).
Sends sequential keep-alive GETs through each, interleaved in blocks so both paths see the same machine noise,
and writes ``bench/results/latency.md`` (p50/p90/p99/max per path, the ratio of the medians).

    python bench/latency.py [--requests 1000] [--block 50] [--warmup 100]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the process helpers live in tests/support, shared with the tests

from tests.support import processes  # noqa: E402

LOOPBACK = processes.LOOPBACK
RESULTS = Path(__file__).resolve().parent / "results" / "latency.md"


@dataclass
class Ports:
    valkey: int
    grpc: int
    echo: int
    ingress: int
    direct: int
    admin: int


@contextlib.contextmanager
def running_stack(workdir: Path) -> Iterator[tuple[Ports, dict[str, str]]]:
    """Valkey + sidecar + echo + Envoy (ingress and direct listeners); everything is stopped on exit."""
    ports = Ports(*(processes.free_port() for _ in range(6)))
    started: list[subprocess.Popen[bytes]] = []

    def up(name: str, proc: subprocess.Popen[bytes], *listen: int) -> None:
        started.append(proc)
        for port in listen:
            processes.wait_for_port(LOOPBACK, port, 20, proc=proc, name=name)

    config = workdir / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"grpc": f"{LOOPBACK}:{ports.grpc}", "http": "", "admin": ""},
                "redis": {"url": f"redis://{LOOPBACK}:{ports.valkey}/0"},
                "log": {"level": "warning"},
            }
        )
    )
    env = {"SIDECAR_CONFIG": str(config)}
    try:
        up("valkey", processes.start_valkey(ports.valkey, workdir / "valkey", workdir / "valkey.log"), ports.valkey)
        up(
            "sidecar",
            processes.start_sidecar(env=env, config=config, log_path=workdir / "sidecar.log", hermetic=True),
            ports.grpc,
        )
        up("echo", processes.start_echo(ports.echo, workdir / "echo.log"), ports.echo)
        envoy_config = processes.render_envoy_config(
            processes.ENVOY_TEMPLATE,
            listen_port=ports.ingress,
            admin_port=ports.admin,
            sidecar_port=ports.grpc,
            upstream_port=ports.echo,
            direct_port=ports.direct,
            out=workdir / "envoy.yaml",
            access_log=False,
        )
        up("envoy", processes.start_envoy(envoy_config, workdir / "envoy.log"), ports.ingress, ports.direct)
        yield ports, env
    finally:
        for proc in reversed(started):
            processes.stop(proc)


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


def timed_get(client: httpx.Client, url: str, headers: dict[str, str], expect_user: str | None) -> float:
    started = time.perf_counter()
    response = client.get(url, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} -> {response.status_code} {response.text[:200]!r}")
    if expect_user is not None and response.json()["headers"].get("x-user-id") != [expect_user]:
        raise RuntimeError(f"GET {url}: the upstream did not get x-user-id {expect_user!r}")
    return elapsed


def measure(ports: Ports, token: str, requests: int, block: int, warmup: int) -> dict[str, list[float]]:
    paths = {
        "direct (no ext_authz)": (f"http://{LOOPBACK}:{ports.direct}/bench", {}, None),
        "sidecar (ext_authz gRPC)": (
            f"http://{LOOPBACK}:{ports.ingress}/bench",
            {"Cookie": f"SESSION={token}"},
            "bench",
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    clients = {name: httpx.Client(trust_env=False, timeout=10.0) for name in paths}
    try:
        for name, (url, headers, user) in paths.items():
            for _ in range(warmup):
                timed_get(clients[name], url, headers, user)
        done = 0
        while done < requests:
            n = min(block, requests - done)
            for name, (url, headers, user) in paths.items():
                samples[name].extend(timed_get(clients[name], url, headers, user) for _ in range(n))
            done += n
    finally:
        for client in clients.values():
            client.close()
    return samples


def report(samples: dict[str, list[float]], requests: int, block: int) -> str:
    rows = []
    medians: dict[str, float] = {}
    for name, values in samples.items():
        ordered = sorted(values)
        medians[name] = percentile(ordered, 50)
        rows.append(
            f"| {name} | {len(values)} | {percentile(ordered, 50):.3f} | {percentile(ordered, 90):.3f} "
            f"| {percentile(ordered, 99):.3f} | {ordered[-1]:.3f} |"
        )
    direct, sidecar = medians.values()
    return "\n".join(
        [
            "# Latency added by the session sidecar",
            "",
            f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
            f"- Envoy {processes.envoy_version()}, Python {platform.python_version()} "
            f"({platform.python_implementation()}), {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs",
            f"- {requests} sequential GETs per path on one keep-alive connection each, interleaved in blocks "
            f"of {block}; Envoy with 1 worker; echo upstream (Python http.server); Valkey on loopback",
            "",
            "| path | requests | p50 ms | p90 ms | p99 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"Median ratio sidecar / direct: **{sidecar / direct:.2f}x** "
            f"(+{sidecar - direct:.3f} ms per request at the median).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="latency added by the sidecar (make bench)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--block", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="session-sidecar-bench-") as tmp:
        workdir = Path(tmp)
        try:
            with running_stack(workdir) as (ports, env):
                created = processes.sidecar_cli("session", "create", "--user", "bench", env=env, hermetic=True)
                if created.returncode != 0:
                    raise RuntimeError(f"session create failed: {created.stderr.strip()}")
                token = json.loads(created.stdout)["token"]
                samples = measure(ports, token, args.requests, args.block, args.warmup)
        except (RuntimeError, processes.ProcessError, httpx.HTTPError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1

    text = report(samples, args.requests, args.block)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
