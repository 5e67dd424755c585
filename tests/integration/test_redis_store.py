"""What only the Redis implementation can get wrong: its key layout, sealing, scripts' cost, bad stored data,
replica acknowledgement, and an unreachable server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.cluster import key_slot

from sidecar.authz.service import AuthzService
from sidecar.config import RedisConfig
from sidecar.core.decision import Allow, Deny
from sidecar.core.redact import redact_url
from sidecar.core.request import RequestView
from sidecar.core.sealing import Sealer
from sidecar.core.session import MAX_VALUE_LENGTH, RecordTooLarge, SessionRecord, new_session
from sidecar.core.tokens import ENTROPY_BYTES, SessionKey, mint_token, session_key, token_key, user_tag
from sidecar.errors import BadInput, CorruptRecord, StoreTimeout, StoreUnavailable
from sidecar.keyring import KeyRingSource
from sidecar.store import redis as redis_module
from sidecar.store.connect import RedisSettings
from sidecar.store.redis import EVICT_BATCH, SCAN_BATCH, RedisStore, user_index_id
from tests.support import processes, servers, topologies
from tests.support.edge import RING, SETTINGS
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")

OLD_KEY = ("e-old", b"o" * 32)
NEW_KEY = ("e-new", b"n" * 32)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plain_session(user: str, idle: float = 60) -> SessionRecord:
    return new_session(
        session_id="sid-" + secrets.token_hex(4), user_id=user, email=f"{user}@example.com", roles=("dev",),
        attributes={"team": "blue"}, idle_timeout=idle, absolute_timeout=600, now=time.time(),
    )  # fmt: skip


def key_for(user: str) -> SessionKey:
    return SessionKey(user_tag(user), token_key(secrets.token_urlsafe(32)))


@pytest.fixture
async def raw(valkey_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(valkey_url)
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"it-{secrets.token_hex(4)}:"


def store_with(url: str, prefix: str, *keys: tuple[str, bytes], **options: object) -> RedisStore:
    return RedisStore.from_url(url, prefix, timeout=2.0, sealer=Sealer(keys), **options)  # type: ignore[arg-type]


@pytest.fixture
async def store(valkey_url: str, prefix: str) -> AsyncIterator[RedisStore]:
    s = store_with(valkey_url, prefix, NEW_KEY, OLD_KEY)
    yield s
    await s.close()


async def test_keys_hold_only_hashes_and_share_the_users_hash_tag(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    key = key_for("alice")
    await store.create(key, plain_session("alice"))
    names = sorted(k.decode() for k in await raw.keys(f"{prefix}*"))
    tag = user_tag("alice")
    assert names == sorted([f"{prefix}{{{tag}}}:s:{key.digest}", f"{prefix}{{{tag}}}:u:{user_index_id('alice')}"])
    assert all("alice" not in name for name in names)


async def test_sealed_values_hold_no_identity_in_clear(store: RedisStore, raw: aioredis.Redis, prefix: str) -> None:
    key = key_for("alice")
    await store.create(key, plain_session("alice"))
    fields = await raw.hgetall(f"{prefix}{{{key.tag}}}:s:{key.digest}")
    assert fields[b"d"].startswith(b"e1.e-new.")
    dumped = b" ".join(fields.values())
    for secret in (b"alice", b"example.com", b"dev", b"blue"):
        assert secret not in dumped


async def test_tampered_ciphertext_is_a_corrupt_record(store: RedisStore, raw: aioredis.Redis, prefix: str) -> None:
    key = key_for("alice")
    await store.create(key, plain_session("alice"))
    name = f"{prefix}{{{key.tag}}}:s:{key.digest}"
    sealed = bytearray(await raw.hget(name, "d"))
    sealed[-5] = ord("A") if sealed[-5] != ord("A") else ord("B")
    await raw.hset(name, "d", bytes(sealed))
    with pytest.raises(CorruptRecord):
        await store.resolve(key, time.time())


async def test_a_stored_value_is_decoded_once_and_a_changed_one_again(
    store: RedisStore, raw: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    real = redis_module.from_json
    monkeypatch.setattr(redis_module, "from_json", lambda raw_json: decoded.append(1) or real(raw_json))
    key = key_for("alice")
    await store.create(key, plain_session("alice"))
    name = f"{prefix}{{{key.tag}}}:s:{key.digest}"
    first = await store.get(key)
    await raw.hset(name, "seen", str(round((time.time() + 5) * 1000)))  # a touch: the sealed value is unchanged
    second = await store.get(key)
    assert first is not None and second is not None and len(decoded) == 1
    assert second.last_seen_at > first.last_seen_at  # the plain last-seen field is read on every read
    sealed = bytearray(await raw.hget(name, "d"))
    sealed[-5] = ord("A") if sealed[-5] != ord("A") else ord("B")
    await raw.hset(name, "d", bytes(sealed))  # tampered after it was decoded: opened again, and refused
    with pytest.raises(CorruptRecord):
        await store.get(key)
    big = key_for("bob")
    await store.create(big, replace(plain_session("bob"), attributes={"a": "x" * 3000}))
    decoded.clear()
    for _ in range(2):
        assert await store.get(big) is not None
    assert len(decoded) == 2  # over MAX_DECODED_VALUE_BYTES: decoded on every read, never kept


async def test_sealed_value_moved_to_another_session_key_does_not_open(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    first, second = key_for("alice"), key_for("alice")
    await store.create(first, plain_session("alice"))
    await store.create(second, plain_session("alice"))
    sealed = await raw.hget(f"{prefix}{{{first.tag}}}:s:{first.digest}", "d")
    await raw.hset(f"{prefix}{{{second.tag}}}:s:{second.digest}", "d", sealed)
    with pytest.raises(CorruptRecord):
        await store.get(second)


async def test_rotated_encryption_key_still_reads_old_sessions(valkey_url: str, prefix: str) -> None:
    before = store_with(valkey_url, prefix, OLD_KEY)
    after = store_with(valkey_url, prefix, NEW_KEY, OLD_KEY)
    retired = store_with(valkey_url, prefix, NEW_KEY)
    try:
        key, rec = key_for("bob"), plain_session("bob")
        await before.create(key, rec)
        assert await after.get(key) == rec
        with pytest.raises(CorruptRecord, match="not configured"):
            await retired.get(key)
    finally:
        for s in (before, after, retired):
            await s.close()


async def test_unsealed_store_reads_and_writes_plain_values(valkey_url: str, prefix: str, raw: aioredis.Redis) -> None:
    plain = store_with(valkey_url, prefix)
    try:
        key, rec = key_for("carol"), plain_session("carol")
        await plain.create(key, rec)
        assert (await raw.hget(f"{prefix}{{{key.tag}}}:s:{key.digest}", "d")).startswith(b"p1.")
        assert await plain.get(key) == rec
    finally:
        await plain.close()


async def test_a_sealed_store_refuses_a_plain_value_a_redis_writer_planted(
    valkey_url: str, prefix: str, raw: aioredis.Redis
) -> None:
    plain, sealed = store_with(valkey_url, prefix), store_with(valkey_url, prefix, NEW_KEY)
    try:
        key = key_for("mallory")
        await plain.create(key, plain_session("admin"))  # unsealed: what anyone with write access can produce
        assert (await raw.hget(f"{prefix}{{{key.tag}}}:s:{key.digest}", "d")).startswith(b"p1.")
        with pytest.raises(CorruptRecord, match="not sealed"):
            await sealed.resolve(key, time.time())
        migrating = RedisStore.from_url(valkey_url, prefix, timeout=2.0, sealer=Sealer((NEW_KEY,), accept_plain=True))
        try:
            record = await migrating.get(key)
            assert record is not None and record.user_id == "admin"  # session.accept_unsealed: the switch-over
        finally:
            await migrating.close()
    finally:
        await plain.close()
        await sealed.close()


@pytest.mark.parametrize(
    "stored",
    [b"not json", b"p1.[]", b'p1.{"v": 99}', b"e1.nokey.AAAA", b"zz", b"p1." + b"[" * 100_000],
    ids=["garbage", "array", "future-version", "unknown-key", "unknown-format", "deeply-nested"],
)
async def test_unusable_stored_value_raises_corrupt_record(
    store: RedisStore, raw: aioredis.Redis, prefix: str, stored: bytes
) -> None:
    key = key_for("dave")
    await raw.hset(f"{prefix}{{{key.tag}}}:s:{key.digest}", mapping={"d": stored, "seen": "1"})
    await raw.expire(f"{prefix}{{{key.tag}}}:s:{key.digest}", 60)
    with pytest.raises(CorruptRecord):
        await store.get(key)


# --- identity values that must never reach a header ------------------------------------------------------

UNSAFE_IDENTITIES: dict[str, dict[str, object]] = {
    "cr_in_user_id": {"uid": "alice\r"},
    "lf_in_user_id": {"uid": "alice\nx-user-roles: admin"},
    "nul_in_user_id": {"uid": "al\x00ice"},
    "oversized_user_id": {"uid": "a" * (MAX_VALUE_LENGTH + 1)},
    "cr_in_email": {"email": "alice@example.com\r"},
    "lf_in_email": {"email": "alice@example.com\r\nx-user-id: root"},
    "nul_in_email": {"email": "alice\x00@example.com"},
    "oversized_email": {"email": "a" * MAX_VALUE_LENGTH + "@example.com"},
    "cr_in_role": {"roles": ["dev", "admin\r"]},
    "lf_in_role": {"roles": ["dev\nx-user-id: root"]},
    "nul_in_role": {"roles": ["\x00"]},
    "oversized_role": {"roles": ["r" * (MAX_VALUE_LENGTH + 1)]},
    "lf_in_session_id": {"sid": "sid\nx-user-id: root"},
}


async def plant(
    store: RedisStore, raw: aioredis.Redis, prefix: str, key: SessionKey, changes: dict[str, object]
) -> None:
    """A well-formed session whose stored JSON then gets ``changes``: what a buggy writer or anyone with write access
    to Redis could leave there. Sealed with the store's own key (when it has one), so only the content is wrong."""
    await store.create(key, plain_session("alice"))
    name = f"{prefix}{{{key.tag}}}:s:{key.digest}"
    sealed = await raw.hget(name, "d")
    keys = (NEW_KEY,) if sealed.startswith(b"e1.") else ()
    data = json.loads(Sealer(keys).open(sealed, name.encode()))
    data.update(changes)
    tampered = json.dumps(data, ensure_ascii=False).encode()
    await raw.hset(name, "d", Sealer(keys).seal(tampered, name.encode()))


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "plain"])
@pytest.mark.parametrize("changes", list(UNSAFE_IDENTITIES.values()), ids=list(UNSAFE_IDENTITIES))
async def test_stored_identity_with_cr_lf_nul_or_over_size_is_a_corrupt_record(
    valkey_url: str, prefix: str, raw: aioredis.Redis, changes: dict[str, object], sealed: bool
) -> None:
    store = store_with(valkey_url, prefix, *((NEW_KEY,) if sealed else ()))
    try:
        key = key_for("alice")
        await plant(store, raw, prefix, key, changes)
        with pytest.raises(CorruptRecord, match="invalid"):
            await store.get(key)
        with pytest.raises(CorruptRecord, match="invalid"):
            await store.resolve(key, time.time())
    finally:
        await store.close()


def request(path: str, cookie: str) -> RequestView:
    headers = (("host", "app.example.com"), ("cookie", cookie), ("x-user-id", "root"))
    return RequestView(method="GET", scheme="https", host="app.example.com", path=path, headers=headers)


@pytest.mark.parametrize("changes", list(UNSAFE_IDENTITIES.values()), ids=list(UNSAFE_IDENTITIES))
async def test_check_denies_a_session_whose_stored_identity_is_unsafe_and_never_raises(
    valkey_url: str, prefix: str, raw: aioredis.Redis, changes: dict[str, object]
) -> None:
    store = store_with(valkey_url, prefix, NEW_KEY)
    try:
        service = AuthzService(SETTINGS, store, KeyRingSource(store, RING), deadline=2.0)
        token = mint_token(RING, secrets.token_bytes(ENTROPY_BYTES), user_tag("alice"))
        good = mint_token(RING, secrets.token_bytes(ENTROPY_BYTES), user_tag("bob"))
        await store.create(session_key(good), plain_session("bob"))
        assert isinstance(await service.check(request("/app", f"SESSION={token}")), Deny)  # not there yet
        await plant(store, raw, prefix, session_key(token), changes)

        denied = await service.check(request("/app", f"SESSION={token}"))
        assert isinstance(denied, Deny) and denied.status == 401, denied
        public = await service.check(request("/public/page", f"SESSION={token}"))
        assert isinstance(public, Allow) and public.user_id is None
        assert not [name for name, _ in public.headers_to_set if name.startswith(("x-user-", "x-session-"))]
        # An unusable record is skipped, not fatal: the next session cookie in header order still counts.
        after = await service.check(request("/app", f"SESSION={token}; SESSION={good}"))
        assert isinstance(after, Allow) and after.user_id == "bob"
    finally:
        await store.close()


async def test_index_holds_no_expired_entries_once_listed_or_written(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    user = "erin-" + secrets.token_hex(3)
    for _ in range(3):
        await store.create(key_for(user), plain_session(user, idle=0.2))
    index = f"{prefix}{{{user_tag(user)}}}:u:{user_index_id(user)}"
    assert await raw.zcard(index) == 3
    await asyncio.sleep(0.5)
    assert await store.list_user(user) == []
    assert await raw.zcard(index) == 0
    for _ in range(2):
        await store.create(key_for(user), plain_session(user, idle=0.2))
    await asyncio.sleep(0.5)
    await store.create(key_for(user), plain_session(user))  # a write prunes too
    assert await raw.zcard(index) == 1


async def test_index_expires_with_the_users_last_session(store: RedisStore, raw: aioredis.Redis, prefix: str) -> None:
    user = "fay-" + secrets.token_hex(3)
    await store.create(key_for(user), plain_session(user))
    ttl_ms = await raw.pttl(f"{prefix}{{{user_tag(user)}}}:u:{user_index_id(user)}")
    assert 590_000 < ttl_ms <= 600_000  # the absolute expiry of its session


async def commands(raw: aioredis.Redis) -> dict[str, int]:
    stats = await raw.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_an_allowed_request_costs_one_round_trip_and_no_write_within_the_touch_interval(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    key = key_for("gus")
    await store.create(key, plain_session("gus"))
    await store.resolve(key, time.time())  # loads the script once
    await raw.config_resetstat()
    for _ in range(10):
        await store.resolve(key, time.time())
    counted = await commands(raw)
    counted.pop("config|resetstat", None)
    counted.pop("info", None)
    # commandstats also counts the commands run inside the script: the length check and one HMGET each, no
    # HSET/PEXPIREAT.
    assert counted == {"evalsha": 10, "hstrlen": 10, "hmget": 10}


async def test_revocation_waits_for_a_connected_replica(valkey_url: str, prefix: str, tmp_path: Path) -> None:
    replica = servers.start_valkey_server(tmp_path / "replica", name="replica")
    try:
        client = aioredis.from_url(replica.url)
        primary_port = valkey_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
        await client.replicaof("127.0.0.1", primary_port)
        deadline = time.monotonic() + 10
        while (await client.info("replication")).get("master_link_status") != "up":
            assert time.monotonic() < deadline, "replica did not connect"
            await asyncio.sleep(0.05)
        waiting = store_with(valkey_url, prefix, NEW_KEY, wait_replicas=1, wait_timeout=0.3)
        key = key_for("hank")
        await waiting.create(key, plain_session("hank"))
        assert await waiting.revoke(key) is True  # acknowledged by the live replica

        await waiting.create(key, plain_session("hank"))
        assert replica.server.proc is not None
        os.kill(replica.server.proc.pid, signal.SIGSTOP)  # a replica that cannot acknowledge
        try:
            with pytest.raises(StoreUnavailable, match="acknowledged"):
                await waiting.revoke(key)
        finally:
            os.kill(replica.server.proc.pid, signal.SIGCONT)
        assert await waiting.get(key) is None  # done on the primary all the same
        await waiting.close()
        await client.replicaof("NO", "ONE")
        await client.aclose()
    finally:
        replica.stop()


async def test_unreachable_server_raises_store_unavailable() -> None:
    store = RedisStore.from_url(f"redis://127.0.0.1:{closed_port()}/0", "x:", timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.get(key_for("x"))
    finally:
        await store.close()


def test_unsupported_url_scheme_is_bad_input() -> None:
    with pytest.raises(BadInput, match=r"redis\.url"):
        RedisStore.from_url("memcached://127.0.0.1:11211", "x:", timeout=1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:hunter2@h:6379/0", "redis://user:<redacted>@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://h:6379/0?password=hunter2", "redis://h:6379/0?password=<redacted>"),
    ],
)
def test_redact_url_hides_passwords_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- bounded script work, whatever a user's history ----------------------------------------------------------

INDEX_ENTRIES = 100_000
SCRIPT_BUDGET_US = 2_000  # per script call, as the server itself times it


@dataclass
class OwnValkey:
    """A Valkey of this module's own, which its tests stall (DEBUG SLEEP), reconfigure and fill."""

    server: servers.Server
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def own_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnValkey]:
    workdir = tmp_path_factory.mktemp("own-valkey")
    server, port = servers.Server("own-valkey", workdir / "own-valkey.log"), free_port()
    try:
        server.attach(
            processes.start_redis_compatible(
                processes.valkey_binary(), port, workdir / "data", server.log,
                extra_args=("--enable-debug-command", "local"),
            )
        )  # fmt: skip
        server.wait_listening(port)
        yield OwnValkey(server, port)
    finally:
        server.stop()


@pytest.fixture
async def own_raw(own_valkey: OwnValkey) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(own_valkey.url)
    yield client
    await client.aclose()


async def fill_index(store: RedisStore, raw: aioredis.Redis, prefix: str, user: str, count: int) -> None:
    """``count`` live sessions of ``user`` written straight into Redis, as a long login history would leave them;
    a hundred share each creation millisecond, so the index holds runs of equal scores."""
    template_key = key_for(user)
    template = plain_session(user)
    await store.create(template_key, template)
    fields = await raw.hgetall(f"{prefix}{{{template_key.tag}}}:s:{template_key.digest}")
    template_sid = template.session_id.encode()
    assert fields[b"d"].startswith(b"p1.") and fields[b"d"].count(template_sid) == 1
    index = f"{prefix}{{{user_tag(user)}}}:u:{user_index_id(user)}"
    await raw.delete(index, f"{prefix}{{{template_key.tag}}}:s:{template_key.digest}")
    created = int(fields[b"created"]) - count
    for start in range(0, count, 5_000):
        pipe = raw.pipeline(transaction=False)
        members: dict[str, int] = {}
        for i in range(start, min(start + 5_000, count)):
            digest = f"{i:064x}"
            name = f"{prefix}{{{template_key.tag}}}:s:{digest}"
            sid = f"bulk-{i}".encode()
            pipe.hset(name, mapping={**fields, b"sid": sid, b"d": fields[b"d"].replace(template_sid, sid)})
            pipe.pexpire(name, 600_000)
            members[digest] = created + i // 100
        pipe.zadd(index, members)
        await pipe.execute()
    await raw.pexpire(index, 600_000)


async def script_cost(raw: aioredis.Redis, action: Awaitable[T]) -> tuple[T, tuple[int, float]]:
    """What ``action`` returned, and how many script calls it made with their mean server time in µs (INFO commandstats:
    the server's own clock, so client-side load does not count; a mean, so one preempted call does not decide)."""
    await raw.config_resetstat()
    result = await action
    stats = (await raw.info("commandstats")).get("cmdstat_evalsha", {"calls": 0, "usec_per_call": 0.0})
    return result, (int(stats["calls"]), float(stats["usec_per_call"]))


async def test_every_script_does_bounded_work_on_a_user_with_100k_index_entries(
    own_valkey: OwnValkey, own_raw: aioredis.Redis
) -> None:
    prefix = f"big-{secrets.token_hex(4)}:"
    user = "heavy-" + secrets.token_hex(3)
    store = RedisStore.from_url(own_valkey.url, prefix, timeout=5.0)
    try:
        await fill_index(store, own_raw, prefix, user, INDEX_ENTRIES)
        await store.create(key_for("warm-up"), plain_session("warm-up"))  # loads the create script
        costs: dict[str, tuple[int, float]] = {}

        async def creates(count: int) -> None:
            for _ in range(count):
                assert await store.create(key_for(user), plain_session(user)) == 0

        _, costs["create"] = await script_cost(own_raw, creates(20))
        # 100,021 entries against a cap of 100,000: a bounded batch goes now, the rest with the next creates.
        capped = store.create(key_for(user), plain_session(user), max_per_user=INDEX_ENTRIES)
        evicted, costs["create over the cap"] = await script_cost(own_raw, capped)
        assert evicted == EVICT_BATCH
        listed, costs["list"] = await script_cost(own_raw, store.list_user(user))
        assert len(listed) == INDEX_ENTRIES + 21 - EVICT_BATCH
        assert [r.session_id for r in listed[:2]] == [f"bulk-{EVICT_BATCH}", f"bulk-{EVICT_BATCH + 1}"]  # oldest first
        assert len({r.session_id for r in listed}) == len(listed)
        newest = listed[-1].session_id  # the last entry a scan reaches
        revoked, costs["revoke session"] = await script_cost(own_raw, store.revoke_session(user, newest))
        assert revoked is True
        count, costs["revoke user"] = await script_cost(own_raw, store.revoke_user(user))
        assert count == len(listed) - 1
        assert await store.list_user(user) == []

        for operation in ("list", "revoke session", "revoke user"):
            assert costs[operation][0] > INDEX_ENTRIES // SCAN_BATCH, costs  # in bounded batches
        assert all(per_call < SCRIPT_BUDGET_US for _, per_call in costs.values()), costs
    finally:
        await own_raw.delete(*[k async for k in own_raw.scan_iter(f"{prefix}*", count=10_000)] or ["-"])
        await store.close()


async def test_revoke_user_outpaced_by_new_sessions_stops_and_says_so(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    user = "pia-" + secrets.token_hex(3)
    await store.create(key_for(user), plain_session(user))
    index = f"{prefix}{{{user_tag(user)}}}:u:{user_index_id(user)}"
    adding = True

    async def login_storm() -> None:  # index entries appear faster than one batch a round trip removes
        n = 0
        while adding:
            await raw.zadd(index, {f"{n + i:064x}": time.time() * 1000 for i in range(4 * SCAN_BATCH)})
            n += 4 * SCAN_BATCH

    await raw.zadd(index, {f"{i:064x}-early": time.time() * 1000 + 1 for i in range(SCAN_BATCH)})
    storm = asyncio.create_task(login_storm())
    try:
        with pytest.raises(StoreUnavailable, match="as fast as they are revoked; 1 revoked so far"):
            await asyncio.wait_for(store.revoke_user(user), 30)
    finally:
        adding = False
        await storm
    assert await store.revoke_user(user) == 0  # the storm over, the next call empties the index
    assert await raw.exists(index) == 0


# --- writes retried after a timeout ------------------------------------------------------------------------

STORE_TIMEOUT = 0.2  # the store's per-attempt timeout in these tests; a write is sent up to 3 times


@contextlib.asynccontextmanager
async def stalled(url: str, seconds: float) -> AsyncIterator[None]:
    """The server sleeps (DEBUG SLEEP: it answers nobody) for ``seconds`` from just before the body runs; the stall
    is over on exit."""
    staller = aioredis.from_url(url, socket_timeout=seconds + 10)
    await staller.ping()
    stall = asyncio.create_task(staller.execute_command("DEBUG", "SLEEP", seconds))
    try:
        await asyncio.sleep(0.02)  # the server is asleep
        yield
    finally:
        await stall
        await staller.aclose()


@pytest.fixture
async def stallable(own_valkey: OwnValkey, prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(own_valkey.url, prefix, timeout=STORE_TIMEOUT, sealer=Sealer((NEW_KEY,)))
    # Every script loaded first: a stalled first call would otherwise be answered NOSCRIPT, not run.
    user, first, second = "warm-up", key_for("warm-up"), key_for("warm-up")
    await s.create(first, plain_session(user))
    await s.rotate(first, second, plain_session(user), time.time())
    await s.revoke(second)
    await s.revoke_session(user, "none")
    await s.list_user(user)
    await s.revoke_user(user)
    yield s
    await s.close()


# Long enough that the first two attempts time out, short enough that the third one gets its answer.
RETRIED_STALL = 2.2 * STORE_TIMEOUT


async def test_create_retried_after_a_timeout_is_one_session_and_succeeds(
    stallable: RedisStore, own_valkey: OwnValkey, own_raw: aioredis.Redis, prefix: str
) -> None:
    user = "ivy-" + secrets.token_hex(3)
    key = key_for(user)
    record = plain_session(user)
    async with stalled(own_valkey.url, RETRIED_STALL):
        assert await stallable.create(key, record) == 0  # not "a session with this key already exists"
    assert await stallable.get(key) == record
    assert [r.session_id for r in await stallable.list_user(user)] == [record.session_id]


async def test_create_retried_after_a_timeout_reports_what_the_first_attempt_evicted(
    stallable: RedisStore, own_valkey: OwnValkey
) -> None:
    user = "ivo-" + secrets.token_hex(3)
    for _ in range(2):
        await stallable.create(key_for(user), plain_session(user))
    async with stalled(own_valkey.url, RETRIED_STALL):
        assert await stallable.create(key_for(user), plain_session(user), max_per_user=1) == 2


async def test_rotate_retried_after_a_timeout_reports_the_move(stallable: RedisStore, own_valkey: OwnValkey) -> None:
    user = "jay-" + secrets.token_hex(3)
    old, new, record = key_for(user), key_for(user), plain_session(user)
    await stallable.create(old, record)
    async with stalled(own_valkey.url, RETRIED_STALL):
        assert await stallable.rotate(old, new, record, time.time()) is True
    assert await stallable.get(old) is None
    moved = await stallable.get(new)
    assert moved is not None and moved.session_id == record.session_id


async def test_revoke_retried_after_a_timeout_reports_the_revocation(
    stallable: RedisStore, own_valkey: OwnValkey
) -> None:
    key = key_for("kim")
    await stallable.create(key, plain_session("kim"))
    async with stalled(own_valkey.url, RETRIED_STALL):
        assert await stallable.revoke(key) is True
    assert await stallable.get(key) is None


async def test_revoke_session_retried_after_a_timeout_reports_the_revocation(
    stallable: RedisStore, own_valkey: OwnValkey
) -> None:
    user = "lea-" + secrets.token_hex(3)
    record = plain_session(user)
    await stallable.create(key_for(user), record)
    async with stalled(own_valkey.url, RETRIED_STALL):
        assert await stallable.revoke_session(user, record.session_id) is True
    assert await stallable.list_user(user) == []


async def test_revoke_user_retried_after_a_timeout_counts_what_it_deleted(
    stallable: RedisStore, own_valkey: OwnValkey
) -> None:
    user = "max-" + secrets.token_hex(3)
    keys = [key_for(user) for _ in range(5)]
    for key in keys:
        await stallable.create(key, plain_session(user))
    async with stalled(own_valkey.url, RETRIED_STALL):
        assert await stallable.revoke_user(user) == 5  # not 0
    for key in keys:
        assert await stallable.get(key) is None


async def test_a_write_whose_every_attempt_timed_out_says_its_outcome_is_unknown_and_happens_once(
    stallable: RedisStore, own_valkey: OwnValkey
) -> None:
    user = "ned-" + secrets.token_hex(3)
    key = key_for(user)
    record = plain_session(user)
    async with stalled(own_valkey.url, 8 * STORE_TIMEOUT):
        with pytest.raises(StoreTimeout, match="outcome unknown"):
            await stallable.create(key, record)
    # Every attempt reached the server and ran once the stall ended: one session, the one asked for.
    assert [r.session_id for r in await stallable.list_user(user)] == [record.session_id]
    assert await stallable.get(key) == record


async def test_a_read_that_timed_out_is_a_plain_timeout(stallable: RedisStore, own_valkey: OwnValkey) -> None:
    async with stalled(own_valkey.url, 8 * STORE_TIMEOUT):
        with pytest.raises(StoreTimeout, match="timed out") as raised:
            await stallable.get(key_for("ola"))
    assert "outcome" not in str(raised.value)


# --- revocations known to be on a replica ----------------------------------------------------------------
#
# WAIT counts the replicas that acknowledged the last write of the connection it is sent on; sent on a connection
# that never wrote (or wrote long ago) it answers at once with every replica counted.

DURABLE_WAIT = 0.1  # the stores' wait_timeout below; STORE_TIMEOUT (the socket timeout) is longer unless stated


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[topologies.ReplicatedPair]:
    topology = topologies.ReplicatedPair(tmp_path_factory.mktemp("pair"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


async def pool_idle_connections(store: RedisStore, count: int, node: topologies.Node) -> None:
    """Leave ``count`` idle connections in the store's pool (to ``node`` on a Cluster), as a loaded sidecar has."""
    client = store.client
    if isinstance(client, RedisCluster):
        spread_connections(store, node, count)
    else:  # as many pings at once as connections wanted: each takes its own
        await asyncio.gather(*(client.ping() for _ in range(count)))
    assert idle_connections(store, node) >= count


def idle_connections(store: RedisStore, node: topologies.Node) -> int:
    client = store.client
    if isinstance(client, RedisCluster):
        cluster_node = client.get_node(host="127.0.0.1", port=node.port)
        assert cluster_node is not None
        return len(cluster_node._free)
    return len(client.connection_pool._available_connections)


Act = Callable[[], Awaitable[object]]


async def _revoke(store: RedisStore, user: str) -> Act:
    key = key_for(user)
    await store.create(key, plain_session(user))
    return lambda: store.revoke(key)


async def _revoke_session(store: RedisStore, user: str) -> Act:
    record = plain_session(user)
    await store.create(key_for(user), record)
    return lambda: store.revoke_session(user, record.session_id)


async def _revoke_user(store: RedisStore, user: str) -> Act:
    for _ in range(3):
        await store.create(key_for(user), plain_session(user))
    return lambda: store.revoke_user(user)


async def _rotate(store: RedisStore, user: str) -> Act:
    old, record = key_for(user), plain_session(user)
    await store.create(old, record)
    return lambda: store.rotate(old, key_for(user), record, time.time())


# Each sets up what it acts on (acknowledged: no replica frozen yet) and returns the waited write itself.
WAITED_WRITES: dict[str, Callable[[RedisStore, str], Awaitable[Act]]] = {
    "revoke": _revoke,
    "revoke_session": _revoke_session,
    "revoke_user": _revoke_user,
    "rotate": _rotate,
}
UNACKNOWLEDGED = "only 0 of 1 replica(s) acknowledged"


def data_nodes(
    request: pytest.FixtureRequest, topology: str, user: str
) -> tuple[str, topologies.Node, list[topologies.Node]]:
    """The URL, the primary holding ``user``'s keys and its replicas, in a running topology."""
    if topology == "standalone":
        pair: topologies.ReplicatedPair = request.getfixturevalue("pair")
        assert pair.primary is not None and pair.replica is not None
        return pair.url, pair.primary, [pair.replica]
    if topology == "sentinel":
        sentinel: topologies.SentinelTopology = request.getfixturevalue("sentinel_topology")
        primary = sentinel.node_on(sentinel.current_primary_port())
        return sentinel.url, primary, [n for n in (sentinel.primary, *sentinel.replicas) if n not in (None, primary)]
    cluster: topologies.ClusterTopology = request.getfixturevalue("cluster_topology")
    primary = topologies.slot_primary(cluster, key_slot(user_tag(user).encode()))
    return cluster.url, primary, [topologies.replica_of(primary, cluster.nodes)]


@pytest.mark.parametrize("write", WAITED_WRITES)
@pytest.mark.parametrize("topology", ["standalone", "sentinel", "cluster"])
async def test_a_waited_write_no_replica_acknowledged_is_refused_whichever_pooled_connection_is_free(
    request: pytest.FixtureRequest, topology: str, write: str
) -> None:
    """With idle connections in the pool, the WAIT after a revocation or rotation counts acknowledgements of that
    write (before the fix, on a Cluster, WAIT went out on another connection and answered 1 at once)."""
    user = f"dur-{secrets.token_hex(3)}"
    url, primary, replicas = data_nodes(request, topology, user)
    store = store_with(url, f"dur-{secrets.token_hex(4)}:", NEW_KEY, wait_replicas=1, wait_timeout=DURABLE_WAIT)
    try:
        act = await WAITED_WRITES[write](store, user)
        await pool_idle_connections(store, 4, primary)
        with contextlib.ExitStack() as frozen:
            for replica in replicas:
                frozen.enter_context(topologies.frozen(replica))
            with pytest.raises(StoreUnavailable) as refused:
                await act()
        assert UNACKNOWLEDGED in str(refused.value), refused.value
        assert await act() is not None  # with the replicas back the store answers again (a replay or a no-op)
    finally:
        await store.close()


async def test_a_cluster_revocation_through_redis_pys_own_path_still_waits_on_a_connection_that_wrote(
    cluster_topology: topologies.ClusterTopology,
) -> None:
    """A fresh client has no slot map, so its first call goes through redis-py's routing; the WAIT still follows a
    write of its own connection (a replay of the revocation on the slot's primary)."""
    user, prefix = f"dur-{secrets.token_hex(3)}", f"dur-{secrets.token_hex(4)}:"
    primary = topologies.slot_primary(cluster_topology, key_slot(user_tag(user).encode()))
    replica = topologies.replica_of(primary, cluster_topology.nodes)
    setup = store_with(cluster_topology.url, prefix, NEW_KEY)
    keys = [key_for(user), key_for(user)]
    try:
        for key in keys:
            await setup.create(key, plain_session(user))
    finally:
        await setup.close()
    for key, frozen in ((keys[0], False), (keys[1], True)):
        fresh = store_with(cluster_topology.url, prefix, NEW_KEY, wait_replicas=1, wait_timeout=DURABLE_WAIT)
        try:
            with contextlib.ExitStack() as stack:
                if frozen:
                    stack.enter_context(topologies.frozen(replica))
                    with pytest.raises(StoreUnavailable, match=re.escape(UNACKNOWLEDGED)):
                        await fresh.revoke(key)
                else:
                    assert await fresh.revoke(key) is True
        finally:
            await fresh.close()


async def test_a_revocation_with_the_default_timeouts_is_refused_when_no_replica_acknowledges(
    pair: topologies.ReplicatedPair,
) -> None:
    """redis.timeout (0.15 s) is shorter than redis.wait_timeout (0.5 s) by default: the WAIT's reply must be
    awaited for the whole wait, not timed out and retried on a fresh connection (which answers 1 at once)."""
    defaults = RedisConfig()
    assert defaults.timeout < defaults.wait_timeout
    store = RedisStore.from_url(
        pair.url, f"dur-{secrets.token_hex(4)}:", timeout=defaults.timeout, wait_replicas=1,
        wait_timeout=defaults.wait_timeout,
    )  # fmt: skip
    assert pair.replica is not None
    try:
        act = await _revoke(store, "dora")
        started = time.monotonic()
        with topologies.frozen(pair.replica), pytest.raises(StoreUnavailable) as refused:
            await act()
        assert UNACKNOWLEDGED in str(refused.value), refused.value
        assert time.monotonic() - started >= defaults.wait_timeout  # the server waited the whole wait_timeout
    finally:
        await store.close()


async def test_a_waited_revocation_is_two_round_trips_on_one_connection(
    pair: topologies.ReplicatedPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script with INFO, then WAIT (before: the script, INFO and WAIT one after another, three)."""
    store = store_with(pair.url, f"dur-{secrets.token_hex(4)}:", NEW_KEY, wait_replicas=1, wait_timeout=DURABLE_WAIT)
    sent: list[int] = []
    send = Connection.send_packed_command

    async def counted(connection: Connection, *args: Any, **kwargs: Any) -> None:
        sent.append(id(connection))
        await send(connection, *args, **kwargs)

    try:
        await (await _revoke(store, "rita"))()  # the script loaded
        act = await _revoke(store, "rita")
        await pool_idle_connections(store, 4, pair.primary)  # type: ignore[arg-type]
        monkeypatch.setattr(Connection, "send_packed_command", counted)
        assert await act() is True
        assert len(sent) == 2 and len(set(sent)) == 1, sent
    finally:
        await store.close()


@pytest.mark.parametrize("write", WAITED_WRITES)
async def test_a_waited_write_replayed_after_a_timeout_is_refused_when_no_replica_acknowledged_the_first_run(
    pair: topologies.ReplicatedPair, write: str
) -> None:
    """A write whose first attempt timed out and ran all the same is answered by a replay on a new connection; the
    WAIT there must still cover the first run's change (before the fix a replay wrote nothing, so WAIT answered 1)."""
    assert pair.replica is not None
    store = RedisStore.from_url(
        pair.url, f"dur-{secrets.token_hex(4)}:", timeout=STORE_TIMEOUT, sealer=Sealer((NEW_KEY,)), wait_replicas=1,
        wait_timeout=DURABLE_WAIT,
    )  # fmt: skip
    user = f"dur-{secrets.token_hex(3)}"
    try:
        await (await WAITED_WRITES[write](store, user + "-warm"))()  # every script loaded: no NOSCRIPT in the stall
        act = await WAITED_WRITES[write](store, user)
        with topologies.frozen(pair.replica), pytest.raises(StoreUnavailable) as refused:
            async with stalled(pair.url, RETRIED_STALL):
                await act()
        assert UNACKNOWLEDGED in str(refused.value), refused.value
    finally:
        await store.close()


# --- the eviction policy the shared key ring needs -------------------------------------------------------

EVICTING = ["allkeys-lru", "allkeys-lfu", "allkeys-random"]
SAFE = ["noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"]


@pytest.mark.parametrize("policy", EVICTING + SAFE)
async def test_eviction_warning_names_policies_that_can_evict_the_key_ring(
    own_valkey: OwnValkey, own_raw: aioredis.Redis, prefix: str, policy: str
) -> None:
    store = RedisStore.from_url(own_valkey.url, prefix, timeout=2.0)
    try:
        await own_raw.config_set("maxmemory-policy", policy)
        warning = await store.eviction_warning()
    finally:
        await own_raw.config_set("maxmemory-policy", "noeviction")
        await store.close()
    if policy in SAFE:
        assert warning is None
    else:
        assert warning is not None
        assert f"maxmemory-policy is {policy}" in warning
        assert f"{prefix}keyring" in warning and "token.keys" in warning and "noeviction" in warning
        assert "\n" not in warning


async def test_eviction_warning_says_when_config_is_refused(
    own_valkey: OwnValkey, own_raw: aioredis.Redis, prefix: str
) -> None:
    user, password = "no-config-" + secrets.token_hex(3), secrets.token_urlsafe(16)
    await own_raw.acl_setuser(user, enabled=True, passwords=[f"+{password}"], commands=["+@all", "-config"], keys=["*"],
                              channels=["*"])  # fmt: skip
    store = RedisStore.connect(RedisSettings(url=own_valkey.url, timeout=2.0, username=user, password=password), prefix)
    try:
        await store.ping()
        warning = await store.eviction_warning()
    finally:
        await store.close()
        await own_raw.acl_deluser(user)
    assert warning is not None
    assert "could not be checked" in warning and "maxmemory-policy" in warning
    assert password not in warning


# --- a planted oversized value is refused by its length, unread -------------------------------------------


async def bytes_sent(raw: aioredis.Redis) -> int:
    return int((await raw.info("stats"))["total_net_output_bytes"])


async def test_an_oversized_stored_value_is_refused_by_its_length_without_being_transferred(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    user = "olga-" + secrets.token_hex(3)
    planted, kept = key_for(user), key_for(user)
    await store.create(planted, plain_session(user))
    await store.create(kept, plain_session(user))
    bound = Sealer((NEW_KEY, OLD_KEY)).max_stored
    size = 2_800_000
    await raw.hset(f"{prefix}{{{planted.tag}}}:s:{planted.digest}", "d", b"e1.e-new." + b"A" * (size - 9))
    wanted = f"stored session value of {size} bytes is over the {bound}-byte bound: refused unread"
    for read in (lambda: store.resolve(planted, time.time()), lambda: store.get(planted)):
        before = await bytes_sent(raw)
        with pytest.raises(RecordTooLarge) as refused:
            await read()
        assert str(refused.value) == wanted
        # Every client of this server counts (this test's INFO answers too): well under the value, whatever else ran.
        assert await bytes_sent(raw) - before < 100_000
    before = await bytes_sent(raw)
    listed = await store.list_user(user)
    assert await bytes_sent(raw) - before < 100_000
    assert [r.session_id for r in listed] == [(await store.get(kept)).session_id]  # type: ignore[union-attr]
    assert await raw.exists(f"{prefix}{{{planted.tag}}}:s:{planted.digest}") == 1  # skipped, not pruned


async def test_a_value_exactly_at_the_bound_is_read_and_opened(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    key = key_for("at-bound")
    bound = Sealer((NEW_KEY, OLD_KEY)).max_stored
    await raw.hset(
        f"{prefix}{{{key.tag}}}:s:{key.digest}", mapping={"d": b"e1.e-new." + b"A" * (bound - 9), "seen": "1"}
    )
    # Read in full and refused by the sealer's own checks (not valid ciphertext), not by its length.
    with pytest.raises(CorruptRecord) as refused:
        await store.get(key)
    assert not isinstance(refused.value, RecordTooLarge)


# --- a Cluster slot migration's ASK window ----------------------------------------------------------------


def spread_connections(store: RedisStore, node: topologies.Node, count: int) -> None:
    """Leave ``count`` idle connections to ``node`` in the store's pool (as a loaded sidecar has): an ASKING sent on
    one of them and the command on another is what redis-py 8.1 does (sidecar/store/redis_cluster.py, ASK window)."""
    client = store.client
    assert isinstance(client, RedisCluster)
    cluster_node = client.get_node(host="127.0.0.1", port=node.port)
    assert cluster_node is not None
    held = [cluster_node.acquire_connection() for _ in range(count)]
    for connection in held:
        cluster_node.release(connection)


async def test_cluster_reads_answer_inside_an_ask_window(cluster_topology: topologies.ClusterTopology) -> None:
    """While the user's slot is half-migrated (its keys already on the target, the owner answering ASK for each)
    and the client holds several connections to the target, every read answers right (before the workaround:
    ClusterError 'TTL exhausted', a StoreUnavailable, for each)."""
    prefix = f"ask-{secrets.token_hex(4)}:"
    store = store_with(cluster_topology.url, prefix, NEW_KEY)
    user = "ask-" + secrets.token_hex(3)
    first, second = key_for(user), key_for(user)
    records = plain_session(user), plain_session(user)
    try:
        for key, record in zip((first, second), records, strict=True):
            await store.create(key, record)
        with topologies.ask_window(cluster_topology, key_slot(first.tag.encode())) as (_owner, target, moved):
            assert moved == 3  # two sessions and the user's index
            spread_connections(store, target, 4)
            for _ in range(3):  # whichever pooled connection each read gets
                found = await store.resolve(first, time.time())
                assert found is not None and found.session_id == records[0].session_id
                assert await store.get(second) == await store.resolve(second, time.time())
                listed = await store.list_user(user)
                assert {r.session_id for r in listed} == {r.session_id for r in records}
    finally:
        await store.close()


@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_cluster_writes_inside_an_ask_window_wait_then_fail_unapplied_and_succeed_after_it(
    cluster_topology: topologies.ClusterTopology, wait_replicas: int
) -> None:
    """Redis refuses a multi-key command on a migrating slot while one of its keys is missing (TRYAGAIN), and
    every write script names a key that does not exist yet: inside the window a write waits a bounded time, then
    fails with one line saying why and that nothing was applied; once the slot settles the same write succeeds
    (and, with wait_replicas, is acknowledged by the slot's replica)."""
    prefix = f"ask-w-{secrets.token_hex(4)}:"
    store = store_with(cluster_topology.url, prefix, NEW_KEY, wait_replicas=wait_replicas)
    user = "ask-w-" + secrets.token_hex(3)
    kept, new = key_for(user), key_for(user)
    record = plain_session(user)
    try:
        await store.create(kept, record)
        with topologies.ask_window(cluster_topology, key_slot(kept.tag.encode())) as (_owner, target, _moved):
            spread_connections(store, target, 4)
            writes = {
                "session create": lambda: store.create(new, plain_session(user)),
                "revocation": lambda: store.revoke(kept),
                "session rotation": lambda: store.rotate(kept, new, record, time.time()),
            }
            for what, write in writes.items():
                started = time.monotonic()
                with pytest.raises(StoreUnavailable) as refused:
                    await write()
                assert time.monotonic() - started < 5.0
                message = str(refused.value)
                assert f"refuses a multi-key {what} there" in message and "not applied" in message, message
                assert "\n" not in message
            assert (await store.resolve(kept, time.time())) is not None  # nothing was revoked or rotated
        assert await store.get(new) is None  # nor created
        assert await store.rotate(kept, new, record, time.time()) is True
        assert await store.revoke(new) is True
    finally:
        await store.close()


async def test_cluster_node_without_the_script_cached_still_answers(
    cluster_topology: topologies.ClusterTopology,
) -> None:
    prefix = f"noscript-{secrets.token_hex(4)}:"
    store = store_with(cluster_topology.url, prefix, NEW_KEY)
    key, record = key_for("nina"), plain_session("nina")
    try:
        await store.create(key, record)
        for node in cluster_topology.primaries:
            node.client().script_flush()
        found = await store.resolve(key, time.time())
        assert found is not None and found.session_id == record.session_id
        assert await store.revoke(key) is True
    finally:
        await store.close()


async def test_unreachable_cluster_raises_store_unavailable_in_one_line() -> None:
    store = RedisStore.from_url(f"redis+cluster://127.0.0.1:{closed_port()}", "x:", timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable, match="no usable cluster node") as refused:
            await store.ping()
        assert "\n" not in str(refused.value)
        with pytest.raises(StoreUnavailable, match="no usable cluster node"):
            await store.resolve(key_for("x"), time.time())
        assert "could not be checked" in (await store.eviction_warning() or "")
    finally:
        await store.close()
