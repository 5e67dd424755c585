"""The framework sources on a real Valkey, with values planted directly (the real writers are in
test_framework_writers.py and the e2e tests): bounded reads, TTL expiry, refusals, a read-only ACL user."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Literal

import pytest
import redis.asyncio as aioredis

from sidecar.core.reasons import Reason
from sidecar.core.session import SessionRecord
from sidecar.errors import StoreUnavailable
from sidecar.sources.formats import MAX_INPUT_BYTES
from sidecar.sources.formats import spring as spring_format
from sidecar.sources.framework import FrameworkKey, FrameworkSource, Settings
from sidecar.sources.kinds import php, rails
from sidecar.sources.paths import Paths
from sidecar.sources.redis_reader import RedisReader
from sidecar.sources.spring import SpringSessionSource
from sidecar.store.connect import RedisSettings, open_client
from tests.support import spring_session

pytestmark = pytest.mark.integration

PHP_ID = "abcdefghijklmnopqrstuvwxyz012345"


@pytest.fixture
async def client(valkey_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(valkey_url)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(4)}:"


def php_source(client: aioredis.Redis, prefix: str) -> FrameworkSource:
    settings = Settings("PHPSESSID", prefix, "php", (), Paths("user_id", "email", "roles"))
    return FrameworkSource(php.kind(settings), RedisReader(client, "test valkey"), "PHPSESSID")


def only_key(source: FrameworkSource | SpringSessionSource, value: str) -> FrameworkKey:
    (key,) = source.candidates_now((value,))
    assert isinstance(key, FrameworkKey)
    return key


async def test_a_live_session_resolves_with_the_keys_ttl_as_its_expiry(client: aioredis.Redis, prefix: str) -> None:
    await client.set(prefix + PHP_ID, b'user_id|i:42;email|s:7:"a@b.com";roles|a:1:{i:0;s:5:"admin";}', px=90_000)
    source = php_source(client, prefix)
    now = time.time()
    record = await source.lookup(only_key(source, PHP_ID), now)
    assert isinstance(record, SessionRecord)
    assert (record.user_id, record.email, record.roles) == ("42", "a@b.com", ("admin",))
    assert 88 < record.absolute_expires_at - now <= 90
    assert PHP_ID not in record.session_id  # the handle, never the id


async def test_a_deleted_or_expired_key_is_no_session(client: aioredis.Redis, prefix: str) -> None:
    source = php_source(client, prefix)
    key = only_key(source, PHP_ID)
    assert await source.lookup(key, time.time()) is None
    await client.set(prefix + PHP_ID, b"user_id|i:1;", px=50)
    await asyncio.sleep(0.1)
    assert await source.lookup(key, time.time()) is None


async def test_a_session_without_a_user_is_no_identity(client: aioredis.Redis, prefix: str) -> None:
    await client.set(prefix + PHP_ID, b"cart|a:0:{}visits|i:3;", px=60_000)
    source = php_source(client, prefix)
    assert await source.lookup(only_key(source, PHP_ID), time.time()) is None


async def test_a_planted_object_is_refused_not_read(client: aioredis.Redis, prefix: str) -> None:
    await client.set(prefix + PHP_ID, b'user_id|O:8:"stdClass":0:{}', px=60_000)
    source = php_source(client, prefix)
    assert await source.lookup(only_key(source, PHP_ID), time.time()) is Reason.RECORD_CORRUPT


async def test_a_value_over_the_bound_is_refused_without_being_read(client: aioredis.Redis, prefix: str) -> None:
    await client.set(prefix + PHP_ID, b"user_id|i:1;" + b"x" * (4 * MAX_INPUT_BYTES), px=60_000)
    source = php_source(client, prefix)
    before = await client.info("commandstats")
    assert await source.lookup(only_key(source, PHP_ID), time.time()) is Reason.RECORD_TOO_LARGE
    after = await client.info("commandstats")
    assert after.get("cmdstat_get", {}).get("calls", 0) == before.get("cmdstat_get", {}).get("calls", 0)


async def test_rails_sessions_are_read_under_racks_private_id(client: aioredis.Redis, prefix: str) -> None:
    public = secrets.token_hex(16)
    settings = Settings("_session_id", prefix, "json", (), Paths("user_id"))
    await client.set(prefix + rails.private_id(public), json.dumps({"user_id": 7}).encode(), ex=60)
    source = FrameworkSource(rails.kind(settings), RedisReader(client, "test valkey"), "_session_id")
    record = await source.lookup(only_key(source, public), time.time())
    assert isinstance(record, SessionRecord) and record.user_id == "7"


async def test_spring_hash_fields_over_the_bound_are_refused(client: aioredis.Redis, prefix: str) -> None:
    sid = "5d9f0a1e-7c2b-4e8f-9a6d-3b1c0e2f4a58"
    settings = Settings("SESSION", prefix, "jdk", (), Paths(""))
    await client.hset(f"{prefix}sessions:{sid}", "sessionAttr:SPRING_SECURITY_CONTEXT", b"\xac\xed" + b"x" * 70_000)
    source = SpringSessionSource(settings, RedisReader(client, "test valkey"))
    assert await source.lookup(only_key(source, sid), time.time()) is Reason.RECORD_TOO_LARGE
    assert await source.lookup(only_key(source, sid.replace("5", "6")), time.time()) is None


async def test_a_read_only_acl_user_is_enough(client: aioredis.Redis, prefix: str, valkey_url: str) -> None:
    user, password = f"ro{secrets.token_hex(3)}", secrets.token_hex(12)
    await client.execute_command(
        "ACL",
        "SETUSER",
        user,
        "on",
        f">{password}",
        f"~{prefix}*",
        "+getrange",
        "+strlen",
        "+pttl",
        "+hstrlen",
        "+hmget",
        "+exists",
    )
    await client.set(prefix + PHP_ID, b'user_id|s:3:"ann";', px=60_000)
    reader_client = open_client(RedisSettings(url=valkey_url, timeout=1.0, username=user, password=password))
    try:
        source = FrameworkSource(
            php.kind(Settings("PHPSESSID", prefix, "php", (), Paths("user_id"))),
            RedisReader(reader_client, "read-only user"),
            "PHPSESSID",
        )
        record = await source.lookup(only_key(source, PHP_ID), time.time())
        assert isinstance(record, SessionRecord) and record.user_id == "ann"
    finally:
        await reader_client.aclose()
        await client.execute_command("ACL", "DELUSER", user)


async def test_an_unreachable_redis_is_a_store_error() -> None:
    dead = open_client(RedisSettings(url="redis://127.0.0.1:1/0", timeout=0.2))
    try:
        source = FrameworkSource(
            php.kind(Settings("PHPSESSID", "p:", "php", (), Paths("user_id"))),
            RedisReader(dead, "dead redis"),
            "PHPSESSID",
        )
        with pytest.raises(StoreUnavailable, match="dead redis"):
            await source.lookup(only_key(source, PHP_ID), time.time())
    finally:
        await dead.aclose()


SPRING_OWN_RULE = Paths("")  # Spring Security's principal and authorities
SPRING_ID = "0f8e3c2a-1b4d-4e6f-8a9b-7c5d3e1f2a4b"


def spring_source(
    client: aioredis.Redis, prefix: str, serializer: str = "jdk", paths: Paths | None = None
) -> SpringSessionSource:
    settings = Settings("SESSION", prefix, serializer, (), paths or SPRING_OWN_RULE)
    return SpringSessionSource(settings, RedisReader(client, "test valkey"))


async def test_a_spring_session_around_real_spring_security_bytes_resolves(client: aioredis.Redis, prefix: str) -> None:
    context = spring_session.sample("7.2.x", "core.context.TransientSecurityContext")  # real bytes: user / ROLE_USER
    now = time.time()
    await client.hset(f"{prefix}sessions:{SPRING_ID}", mapping=spring_session.session_hash(context, int(now * 1000)))
    source = spring_source(client, prefix)
    record = await source.lookup(only_key(source, SPRING_ID), now)
    assert isinstance(record, SessionRecord)
    assert (record.user_id, record.roles) == ("user", ("ROLE_USER",))
    assert 1795 < record.absolute_expires_at - now <= 1800  # lastAccessedTime + maxInactiveInterval


async def test_a_spring_session_past_its_inactive_interval_is_no_session_though_its_key_lives(
    client: aioredis.Redis, prefix: str
) -> None:
    context = spring_session.sample("7.2.x", "core.context.TransientSecurityContext")
    now = time.time()
    idle_since = int((now - 1801) * 1000)  # the indexed repository keeps the hash 5 minutes longer than this
    await client.hset(f"{prefix}sessions:{SPRING_ID}", mapping=spring_session.session_hash(context, idle_since))
    source = spring_source(client, prefix)
    assert await source.lookup(only_key(source, SPRING_ID), now) is None
    await client.hset(f"{prefix}sessions:{SPRING_ID}", mapping=spring_session.session_hash(context, idle_since, -1))
    assert isinstance(await source.lookup(only_key(source, SPRING_ID), now), SessionRecord)  # negative: never


async def test_an_empty_security_context_is_no_identity(client: aioredis.Redis, prefix: str) -> None:
    empty = spring_session.sample("7.2.x", "core.context.SecurityContextImpl")  # real bytes: no authentication
    now = time.time()
    await client.hset(f"{prefix}sessions:{SPRING_ID}", mapping=spring_session.session_hash(empty, int(now * 1000)))
    source = spring_source(client, prefix)
    assert await source.lookup(only_key(source, SPRING_ID), now) is None


def json_context(authenticated: bool) -> bytes:
    authentication = {
        "@class": "org.springframework.security.authentication.UsernamePasswordAuthenticationToken",
        "authorities": ["java.util.Collections$UnmodifiableRandomAccessList", []],
        "details": None,
        "authenticated": authenticated,
        "principal": "mallory",
        "credentials": None,
    }
    context = {
        "@class": "org.springframework.security.core.context.SecurityContextImpl",
        "authentication": authentication,
    }
    return json.dumps(context).encode()


async def test_configured_paths_never_name_the_user_of_an_unauthenticated_context(
    client: aioredis.Redis, prefix: str
) -> None:
    now_ms = int(time.time() * 1000)
    fields = {"creationTime": now_ms, "lastAccessedTime": now_ms, "maxInactiveInterval": 600}
    key = f"{prefix}sessions:{SPRING_ID}"
    source = spring_source(client, prefix, "json", Paths("authentication.principal"))
    await client.hset(key, mapping={**fields, "sessionAttr:SPRING_SECURITY_CONTEXT": json_context(False)})
    assert await source.lookup(only_key(source, SPRING_ID), time.time()) is None
    await client.hset(key, mapping={**fields, "sessionAttr:SPRING_SECURITY_CONTEXT": json_context(True)})
    record = await source.lookup(only_key(source, SPRING_ID), time.time())
    assert isinstance(record, SessionRecord) and record.user_id == "mallory"


async def test_a_security_context_seen_before_is_not_read_again_and_a_changed_one_is(
    client: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = spring_session.sample("7.2.x", "core.context.TransientSecurityContext")
    read_contexts: list[bytes] = []
    real = spring_format.read_context

    def counting(raw: bytes, serializer: Literal["jdk", "json"]) -> object:
        if raw.startswith(context[:64]):
            read_contexts.append(raw)
        return real(raw, serializer)

    monkeypatch.setattr(spring_format, "read_context", counting)
    key = f"{prefix}sessions:{SPRING_ID}"
    await client.hset(key, mapping=spring_session.session_hash(context, int(time.time() * 1000)))
    source = spring_source(client, prefix)
    for _ in range(3):
        assert isinstance(await source.lookup(only_key(source, SPRING_ID), time.time()), SessionRecord)
    assert len(read_contexts) == 1
    # Another username of the same length in the same bytes: a different context, read anew and answered as such.
    renamed = context.replace(b"\x00\x04user", b"\x00\x04ursu", 1)
    assert renamed != context
    await client.hset(key, "sessionAttr:SPRING_SECURITY_CONTEXT", renamed)
    record = await source.lookup(only_key(source, SPRING_ID), time.time())
    assert isinstance(record, SessionRecord) and record.user_id == "ursu"
    assert len(read_contexts) == 2


@pytest.mark.parametrize("marked", [True, False])
async def test_a_session_spring_security_marked_expired_is_no_session(
    client: aioredis.Redis, prefix: str, marked: bool
) -> None:
    context = spring_session.sample("7.2.x", "core.context.TransientSecurityContext")
    fields = spring_session.session_hash(context, int(time.time() * 1000))
    fields[spring_session.EXPIRED_ATTRIBUTE] = spring_session.jdk_bool(marked)  # maximumSessions pushed it out
    await client.hset(f"{prefix}sessions:{SPRING_ID}", mapping=fields)  # type: ignore[arg-type]
    source = spring_source(client, prefix)
    found = await source.lookup(only_key(source, SPRING_ID), time.time())
    assert (found is None) if marked else isinstance(found, SessionRecord)


async def test_a_key_of_another_redis_type_is_a_refused_record_not_a_store_failure(
    client: aioredis.Redis, prefix: str
) -> None:
    await client.hset(prefix + PHP_ID, "planted", "hash")
    await client.set(f"{prefix}sessions:{SPRING_ID}", b"a string where Spring keeps a hash")
    php = php_source(client, prefix)
    assert await php.lookup(only_key(php, PHP_ID), time.time()) is Reason.RECORD_CORRUPT
    spring = spring_source(client, prefix)
    assert await spring.lookup(only_key(spring, SPRING_ID), time.time()) is Reason.RECORD_CORRUPT
