"""Real Redis topologies from the valkey-server binary, on loopback free ports, always torn down.

- ``ReplicatedPair``: 1 primary (DEBUG allowed from loopback) + 1 replica, plain replication without Sentinel.
- ``SentinelTopology``: 1 primary, 2 replicas, 3 sentinels (quorum 2, ``down-after-milliseconds`` 1000).
- ``ClusterTopology``: 3 primaries + 3 replicas, slots split evenly, built with CLUSTER MEET/ADDSLOTSRANGE/
  REPLICATE (no valkey-cli needed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support import processes
from tests.support.servers import LOOPBACK, Server

START_TIMEOUT = 30.0
MASTER_NAME = "sidecar-primary"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Node:
    name: str
    port: int
    server: Server
    extra_args: tuple[str, ...] = ()
    workdir: Path = field(default_factory=Path)
    bus_port: int = 0

    def start(self) -> None:
        self.server.attach(
            processes.start_redis_compatible(
                processes.valkey_binary(), self.port, self.workdir, self.server.log, extra_args=self.extra_args
            )
        )
        self.server.wait_listening(self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def stop(self) -> None:
        self.server.stop()


def _node(workdir: Path, name: str, extra_args: tuple[str, ...] = ()) -> Node:
    node_dir = workdir / name
    node_dir.mkdir(parents=True, exist_ok=True)
    return Node(name, processes.free_port(), Server(name, workdir / f"{name}.log"), extra_args, node_dir)


def _wait_linked(replica: Node) -> None:
    wait_until(
        lambda: replica.client().info("replication").get("master_link_status") == "up", f"{replica.name} to sync"
    )


@contextlib.contextmanager
def frozen(node: Node) -> Iterator[None]:
    """``node`` stopped (SIGSTOP) for the body: still connected, so its primary counts it, but it acknowledges no
    replication offset until it is continued on exit. Keep the body well under a Cluster's node timeout."""
    proc = node.server.proc
    assert proc is not None, f"{node.name} is not running"
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def replica_of(primary: Node, candidates: list[Node]) -> Node:
    """The node among ``candidates`` that ``primary`` has as its (first) replica, as its INFO replication says."""
    port = int(primary.client().info("replication")["slave0"]["port"])
    return next(n for n in candidates if n.port == port)


@dataclass
class ReplicatedPair:
    workdir: Path
    primary: Node | None = None
    replica: Node | None = None

    @property
    def url(self) -> str:
        assert self.primary is not None
        return f"redis://{LOOPBACK}:{self.primary.port}/0"

    def start(self) -> None:
        self.primary = _node(self.workdir, "primary", ("--enable-debug-command", "local"))
        self.primary.start()
        self.replica = _node(self.workdir, "replica", ("--replicaof", LOOPBACK, str(self.primary.port)))
        self.replica.start()
        _wait_linked(self.replica)

    def stop(self) -> None:
        for node in (self.replica, self.primary):
            if node is not None:
                node.stop()


@dataclass
class SentinelTopology:
    workdir: Path
    primary: Node | None = None
    replicas: list[Node] = field(default_factory=list)
    sentinels: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [n for n in (self.primary, *self.replicas, *self.sentinels) if n is not None]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{LOOPBACK}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    def start(self) -> None:
        self.primary = _node(self.workdir, "primary")
        self.primary.start()
        for i in range(2):
            replica = _node(self.workdir, f"replica{i}", ("--replicaof", LOOPBACK, str(self.primary.port)))
            replica.start()
            self.replicas.append(replica)
        for replica in self.replicas:
            _wait_linked(replica)
        for i in range(3):
            name = f"sentinel{i}"
            node = _node(self.workdir, name)
            conf = node.workdir / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {MASTER_NAME} {LOOPBACK} {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 4000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            node.extra_args = (str(conf), "--sentinel")
            node.start()
            self.sentinels.append(node)
        for sentinel in self.sentinels:
            wait_until(
                lambda s=sentinel: (
                    len(s.client().execute_command("SENTINEL", "SENTINELS", MASTER_NAME)) >= 2
                    and len(s.client().execute_command("SENTINEL", "REPLICAS", MASTER_NAME)) >= 2
                ),
                f"{sentinel.name} to see the other sentinels and both replicas",
            )

    def current_primary_port(self) -> int:
        _host, port = self.sentinels[0].client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def node_on(self, port: int) -> Node:
        return next(n for n in (self.primary, *self.replicas) if n is not None and n.port == port)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@dataclass
class ClusterTopology:
    workdir: Path
    primaries: list[Node] = field(default_factory=list)
    replicas: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [*self.primaries, *self.replicas]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{LOOPBACK}:{n.port}" for n in self.primaries)

    def start(self) -> None:
        for i in range(6):
            # The bus port defaults to port + 10000, which may be taken or out of range: pick a free one.
            bus_port = processes.free_port()
            node = _node(
                self.workdir,
                f"cluster{i}",
                (
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    str(bus_port),
                ),
            )
            node.bus_port = bus_port
            node.start()
            (self.primaries if i < 3 else self.replicas).append(node)
        first = self.primaries[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", LOOPBACK, node.port, node.bus_port)
        ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
        for node, (low, high) in zip(self.primaries, ranges, strict=True):
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        wait_until(lambda: all(len(n.client().execute_command("CLUSTER", "NODES").splitlines()) == 6
                               for n in self.nodes), "every node to know all six")  # fmt: skip
        for primary, replica in zip(self.primaries, self.replicas, strict=True):
            node_id = primary.client().execute_command("CLUSTER", "MYID")
            replica.client().execute_command("CLUSTER", "REPLICATE", node_id)
        wait_until(
            lambda: all(
                n.client().execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") >= 0 for n in self.nodes
            ),
            "cluster_state:ok on every node",
        )
        for replica in self.replicas:
            _wait_linked(replica)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _node_id(node: Node) -> str:
    raw = node.client().execute_command("CLUSTER", "MYID")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def slot_primary(topology: ClusterTopology, slot: int) -> Node:
    """The primary serving ``slot``, as the first primary's ``CLUSTER SLOTS`` says."""
    for low, high, primary, *_replicas in topology.primaries[0].client().execute_command("CLUSTER", "SLOTS"):
        if low <= slot <= high:
            return next(n for n in topology.primaries if n.port == int(primary[1]))
    raise LookupError(f"no primary serves slot {slot}")


def _move_keys(source: Node, target: Node, slot: int) -> int:
    moved = 0
    while keys := source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.client().execute_command("MIGRATE", LOOPBACK, target.port, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
    return moved


@contextlib.contextmanager
def ask_window(topology: ClusterTopology, slot: int) -> Iterator[tuple[Node, Node, int]]:
    """``slot`` half-migrated, as redis-cli leaves it mid-reshard: the target IMPORTING, its owner MIGRATING, and
    every key of the slot already moved to the target, so the owner answers ASK for each. Yields (owner, target,
    keys moved). On exit every key of the slot (those written meanwhile too) goes back and both nodes are STABLE:
    the slot never changes owner."""
    owner = slot_primary(topology, slot)
    target = next(n for n in topology.primaries if n is not owner)
    target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _node_id(owner))
    try:
        owner.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _node_id(target))
        try:
            yield owner, target, _move_keys(owner, target, slot)
        finally:
            # STABLE first: a MIGRATING owner answers ASK to the RESTORE of a key it does not hold.
            owner.client().execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            _move_keys(target, owner, slot)
    finally:
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
