"""What one user's history costs Redis: each store script's server time by the size of that user's index, and
other users' PING latency while that user logs in from several clients at once.

Fills a fresh embedded Valkey with N live sessions of one user (written straight into Redis, as a long login history
leaves them), then reads INFO commandstats (the server's own clock) around each operation. Prints markdown.

    python bench/script_cost.py [N ...]        (default: 1000 10000 50000 100000)
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the process helpers live in tests/support, shared with the tests

from sidecar.core.session import SessionRecord, new_session  # noqa: E402
from sidecar.core.tokens import SessionKey, token_key, user_tag  # noqa: E402
from sidecar.store.redis import RedisStore, user_index_id  # noqa: E402
from tests.support import processes  # noqa: E402

T = TypeVar("T")
PARALLEL_CREATES = 4
LOAD_SECONDS = 3.0
CREATES = 20  # the create cost is their mean


def key_for(user: str) -> SessionKey:
    return SessionKey(user_tag(user), token_key(secrets.token_urlsafe(32)))


def session(user: str) -> SessionRecord:
    return new_session(session_id=secrets.token_urlsafe(8), user_id=user, email=None, roles=("dev",), attributes={},
                       idle_timeout=1800, absolute_timeout=43200, now=time.time())  # fmt: skip


async def fill(store: RedisStore, raw: aioredis.Redis, prefix: str, user: str, count: int) -> None:
    template = key_for(user)
    await store.create(template, session(user))
    name = f"{prefix}{{{template.tag}}}:s:{template.digest}"
    fields = await raw.hgetall(name)
    index = f"{prefix}{{{template.tag}}}:u:{user_index_id(user)}"
    await raw.delete(index, name)
    created = int(fields[b"created"]) - count
    for start in range(0, count, 5_000):
        pipe = raw.pipeline(transaction=False)
        members = {}
        for i in range(start, min(start + 5_000, count)):
            digest = f"{i:064x}"
            pipe.hset(f"{prefix}{{{template.tag}}}:s:{digest}", mapping={**fields, b"sid": f"bulk-{i}".encode()})
            pipe.pexpire(f"{prefix}{{{template.tag}}}:s:{digest}", 3_600_000)
            members[digest] = created + i
        pipe.zadd(index, members)
        await pipe.execute()
    await raw.pexpire(index, 3_600_000)


async def creates(store: RedisStore, user: str, count: int) -> None:
    for _ in range(count):
        await store.create(key_for(user), session(user))


async def cost(raw: aioredis.Redis, action: Awaitable[T]) -> tuple[T, int, float]:
    await raw.config_resetstat()
    result = await action
    stats = (await raw.info("commandstats")).get("cmdstat_evalsha", {"calls": 0, "usec_per_call": 0.0})
    return result, int(stats["calls"]), float(stats["usec_per_call"])


async def ping_under_load(store: RedisStore, raw: aioredis.Redis, user: str) -> tuple[float, float, int]:
    """PING p50/p99 (ms, client wall time) while PARALLEL_CREATES clients create sessions for ``user``."""
    stop = time.monotonic() + LOAD_SECONDS
    created = 0

    async def creator() -> None:
        nonlocal created
        while time.monotonic() < stop:
            await store.create(key_for(user), session(user))
            created += 1

    async def pinger() -> list[float]:
        samples = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            await raw.ping()
            samples.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.01)
        return samples

    *_, samples = await asyncio.gather(*(creator() for _ in range(PARALLEL_CREATES)), pinger())
    quantiles = statistics.quantiles(samples, n=100)
    return quantiles[49], quantiles[98], created


async def run(url: str, sizes: list[int]) -> list[str]:
    raw = aioredis.from_url(url)
    rows = []
    for size in sizes:
        prefix, user = f"bench-{secrets.token_hex(3)}:", "heavy"
        store = RedisStore.from_url(url, prefix, timeout=10.0)
        await fill(store, raw, prefix, user, size)
        await store.create(key_for("warm-up"), session("warm-up"))
        _, _, create_us = await cost(raw, creates(store, user, CREATES))
        listed, list_calls, list_us = await cost(raw, store.list_user(user))
        _, rs_calls, rs_us = await cost(raw, store.revoke_session(user, listed[-1].session_id))
        p50, p99, created = await ping_under_load(store, raw, user)
        _, ru_calls, ru_us = await cost(raw, store.revoke_user(user))
        rows.append(
            f"| {size:,} | {create_us:.0f} | {list_calls} x {list_us:.0f} | {rs_calls} x {rs_us:.0f} "
            f"| {ru_calls} x {ru_us:.0f} | {p50:.2f} / {p99:.2f} ({created:,} creates) |"
        )
        await store.close()
    await raw.aclose()
    return rows


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1_000, 10_000, 50_000, 100_000]
    with tempfile.TemporaryDirectory() as tmp:
        port = processes.free_port()
        proc = processes.start_redis_compatible(processes.valkey_binary(), port, Path(tmp) / "data")
        try:
            processes.wait_for_port(processes.LOOPBACK, port, 20, proc=proc, name="valkey")
            rows = asyncio.run(run(f"redis://{processes.LOOPBACK}:{port}/0", sizes))
        finally:
            processes.stop(proc)
    print("| index entries | create µs | list: calls x µs | revoke-session: calls x µs | revoke-user: calls x µs "
          f"| PING p50 / p99 ms, {PARALLEL_CREATES} parallel creates for that user |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
