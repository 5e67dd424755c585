"""``serve --workers N``: N single-process sidecars, each on its own port, under one supervisor.

Envoy holds few, long-lived HTTP/2 connections to its ext_authz cluster, so N processes behind one SO_REUSEPORT
port get very uneven load (measured in DESIGN.md). Instead worker ``i`` listens on the configured port + ``i``
(gRPC, and HTTP when enabled), and the ports are listed as separate endpoints of one Envoy cluster. Only worker 0
serves the admin listener. The supervisor restarts a worker that dies and forwards SIGTERM/SIGINT to all.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

from sidecar import metrics
from sidecar.config import Config
from sidecar.config.models.listen import unix_path
from sidecar.errors import BadInput

log = logging.getLogger("sidecar.workers")

MAX_WORKERS = 64
RESTART_BACKOFF_SECONDS = 1.0


def _shift(address: str, offset: int) -> str:
    host, _, port = address.rpartition(":")
    shifted = int(port) + offset
    if shifted > 65535:
        raise BadInput(f"--workers: port {shifted} of worker {offset} is out of range")
    return f"{host}:{shifted}"


# The listeners every worker has its own port of (port + i); the admin listener is worker 0's alone.
_PER_WORKER = ("grpc", "http", "api")


def worker_environments(config: Config, workers: int) -> list[dict[str, str]]:
    """The SIDECAR_LISTEN__* overrides of each worker (pure: no I/O)."""
    if not 1 <= workers <= MAX_WORKERS:
        raise BadInput(f"--workers: must be between 1 and {MAX_WORKERS}")
    listen = config.listen
    addresses = {key: address for key in _PER_WORKER if (address := getattr(listen, key))}
    if workers > 1:
        for key, address in addresses.items():
            if unix_path(address) is not None:
                raise BadInput(f"--workers: listen.{key} is a unix socket ({address}); workers need TCP ports")
            if address.endswith(":0"):
                raise BadInput(f"--workers: listen.{key} needs a fixed port (worker i listens on port + i)")
        admin = {"admin": listen.admin} if listen.admin and unix_path(listen.admin) is None else {}
        _refuse_colliding_ranges({**addresses, **admin}, workers)
    environments = []
    for i in range(workers):
        env = {
            f"SIDECAR_LISTEN__{key.upper()}": _shift(addresses[key], i) if key in addresses else ""
            for key in _PER_WORKER
        }
        env["SIDECAR_LISTEN__ADMIN"] = listen.admin if i == 0 else ""
        environments.append(env)
    return environments


def _refuse_colliding_ranges(addresses: Mapping[str, str], workers: int) -> None:
    ranges = {}
    for key, address in addresses.items():
        port = int(address.rpartition(":")[2])
        ranges[key] = range(port, port + (workers if key in _PER_WORKER else 1))
    keys = list(ranges)
    for n, first in enumerate(keys):
        for second in keys[n + 1 :]:
            a, b = ranges[first], ranges[second]
            if set(a) & set(b):
                raise BadInput(
                    f"--workers {workers}: worker ports collide: listen.{first} uses {a.start}-{a.stop - 1} "
                    f"and listen.{second} {b.start}-{b.stop - 1}; move listen.{second} outside that range "
                    f'(e.g. to port {max(a.stop, b.stop) + 100}) or disable it (listen.{second}: "")'
                )


def supervise(argv: Sequence[str], environments: Sequence[Mapping[str, str]]) -> int:
    """Run one child per environment until SIGTERM/SIGINT; restart children that exit on their own.

    The children share one Prometheus multiprocess directory, so worker 0's /metrics covers all of them.
    """
    metrics_dir, owned = metrics.prepare_multiprocess_dir()
    try:
        shared = [{**env, metrics.MULTIPROC_ENV: metrics_dir} for env in environments]
        return _supervise(argv, shared, metrics_dir)
    finally:
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(argv: Sequence[str], environments: Sequence[Mapping[str, str]], metrics_dir: str) -> int:
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    children: list[subprocess.Popen[bytes] | None] = [None] * len(environments)

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        for child in children:  # each worker re-reads its own configuration (the assertion keys)
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGHUP)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    started_at = [0.0] * len(environments)
    try:
        while not stopping:
            for i, env in enumerate(environments):
                child = children[i]
                if child is not None and child.poll() is None:
                    continue
                if child is not None:
                    log.warning(
                        "worker %d (%s) exited with %s; restarting", i, env["SIDECAR_LISTEN__GRPC"], child.returncode
                    )
                    metrics.worker_exited(child.pid, metrics_dir)
                    if time.monotonic() - started_at[i] < RESTART_BACKOFF_SECONDS:
                        time.sleep(RESTART_BACKOFF_SECONDS)
                children[i] = subprocess.Popen([*argv], env={**os.environ, **env})
                started_at[i] = time.monotonic()
            time.sleep(0.1)
    finally:
        for child in children:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            if child is not None:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                metrics.worker_exited(child.pid, metrics_dir)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def worker_argv(config_path: str | None) -> list[str]:
    argv = [sys.executable, "-m", "sidecar", "serve"]
    if config_path:
        argv += ["--config", config_path]
    return argv
