"""SessionManager and KeyRingSource on the in-memory store: issue, read, rotate, revoke, list, cap."""

from __future__ import annotations

import pytest

from sidecar.core.tokens import is_well_formed, session_key, user_tag
from sidecar.errors import BadInput
from sidecar.keyring import KeyRingSource
from sidecar.lifecycle import SessionManager
from sidecar.store.memory import MemoryStore
from tests.support.edge import RING


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock)


def manager_for(store: MemoryStore, clock: Clock, max_per_user: int = 0) -> SessionManager:
    return SessionManager(
        store, KeyRingSource(store, RING), cookie_name="__Host-session", idle_timeout=60, absolute_timeout=3600,
        max_per_user=max_per_user, clock=clock,
    )  # fmt: skip


@pytest.fixture
def manager(store: MemoryStore, clock: Clock) -> SessionManager:
    return manager_for(store, clock)


async def test_create_issues_a_token_tagged_for_the_user_and_a_host_prefixed_cookie(manager: SessionManager) -> None:
    issued = await manager.create("alice", roles=("dev",))
    assert is_well_formed(issued.token)
    assert session_key(issued.token).tag == user_tag("alice")
    assert issued.set_cookie.startswith(f"__Host-session={issued.token}; Max-Age=3600;")


async def test_get_reads_without_touching_and_ignores_dead_sessions(manager: SessionManager, clock: Clock) -> None:
    issued = await manager.create("alice")
    clock.now += 30
    got = await manager.get(issued.token)
    assert got is not None and got.last_seen_at == issued.record.last_seen_at
    clock.now += 31
    assert await manager.get(issued.token) is None


async def test_rotate_kills_the_old_token_and_keeps_the_session(manager: SessionManager) -> None:
    issued = await manager.create("alice", email="a@example.com", roles=("dev",))
    rotated = await manager.rotate(issued.token, roles=("dev", "admin"))
    assert rotated is not None and rotated.token != issued.token
    assert await manager.get(issued.token) is None
    now = await manager.get(rotated.token)
    assert now is not None
    assert (now.session_id, now.email, now.roles) == (issued.record.session_id, "a@example.com", ("dev", "admin"))


async def test_rotate_can_clear_the_email_and_keeps_what_is_not_given(manager: SessionManager) -> None:
    issued = await manager.create("alice", email="a@example.com", roles=("dev",), attributes={"t": "1"})
    rotated = await manager.rotate(issued.token, email=None)
    assert rotated is not None
    assert (rotated.record.email, rotated.record.roles, dict(rotated.record.attributes)) == (None, ("dev",), {"t": "1"})


async def test_rotate_of_a_dead_or_unknown_token_is_none(manager: SessionManager, clock: Clock) -> None:
    issued = await manager.create("alice")
    await manager.revoke(issued.token)
    assert await manager.rotate(issued.token) is None
    other = await manager.create("bob")
    clock.now += 61
    assert await manager.rotate(other.token) is None


async def test_rotate_with_an_unsafe_role_is_bad_input_and_changes_nothing(manager: SessionManager) -> None:
    issued = await manager.create("alice")
    with pytest.raises(BadInput, match="role"):
        await manager.rotate(issued.token, roles=("a,b",))
    assert await manager.get(issued.token) is not None


@pytest.mark.parametrize("token", ["", "garbage", "s1.k1.abc123.short.mac"])
async def test_malformed_tokens_are_bad_input_everywhere(manager: SessionManager, token: str) -> None:
    for call in (manager.get, manager.revoke, manager.rotate):
        with pytest.raises(BadInput, match="malformed"):
            await call(token)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"user_id": ""}, "user id"),
        ({"user_id": "a\r\nb"}, "user id"),
        ({"user_id": "a", "email": "x\x00"}, "email"),
        ({"user_id": "a", "attributes": {"k": "v" * 5000}}, "attribute"),
        ({"user_id": "a", "attributes": {"bad key": "v"}}, "attribute name"),
        ({"user_id": "a", "idle_timeout": 0}, "idle timeout"),
    ],
)
async def test_bad_identity_is_bad_input_and_nothing_is_written(
    manager: SessionManager, store: MemoryStore, kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(BadInput, match=needle):
        await manager.create(**kwargs)  # type: ignore[arg-type]
    assert store._records == {} and all(not keys for keys in store._users.values())


async def test_cap_per_user_evicts_the_oldest_session(store: MemoryStore, clock: Clock) -> None:
    manager = manager_for(store, clock, max_per_user=2)
    first = await manager.create("alice")
    clock.now += 1
    await manager.create("alice")
    clock.now += 1
    await manager.create("alice")
    assert await manager.get(first.token) is None
    assert len(await manager.list("alice")) == 2


async def test_revoke_session_by_handle_and_list_never_shows_tokens(manager: SessionManager) -> None:
    one = await manager.create("alice")
    two = await manager.create("alice")
    assert await manager.revoke_session("alice", one.record.session_id) is True
    listed = await manager.list("alice")
    assert [r.session_id for r in listed] == [two.record.session_id]
    assert await manager.revoke_user("alice") == 1


async def test_non_utf8_user_id_from_a_command_line_is_bad_input(manager: SessionManager) -> None:
    undecodable = b"al\xffice".decode("utf-8", "surrogateescape")  # what argv holds for non-UTF-8 bytes
    with pytest.raises(BadInput, match="UTF-8"):
        await manager.create(undecodable)


@pytest.mark.parametrize("timeouts", [{"idle_timeout": 1e12}, {"absolute_timeout": 401 * 86400}])
async def test_timeouts_beyond_400_days_are_bad_input(manager: SessionManager, timeouts: dict[str, float]) -> None:
    with pytest.raises(BadInput, match="at most 400 days"):
        await manager.create("alice", **timeouts)  # type: ignore[arg-type]


async def test_empty_user_or_session_ids_are_bad_input(manager: SessionManager) -> None:
    with pytest.raises(BadInput, match="user id"):
        await manager.revoke_user("")
    with pytest.raises(BadInput, match="user id"):
        await manager.list("")
    with pytest.raises(BadInput, match="session id"):
        await manager.revoke_session("alice", "")
