"""store_errors: every redis-py failure becomes StoreTimeout or StoreUnavailable, one line naming the store and
what failed; a timed-out write says its outcome is unknown and that repeating it is safe."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AuthenticationError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.errors import StoreError, StoreTimeout, StoreUnavailable
from sidecar.store.redis_errors import store_errors

STORE = "redis://127.0.0.1:6390/0"


async def translated(error: BaseException, write: str | None = None, waited: float = 0.0) -> StoreError:
    with pytest.raises(StoreError) as caught:
        async with store_errors(STORE, write, tryagain_waited=waited):
            raise error
    return caught.value


async def test_a_timed_out_read_is_a_store_timeout() -> None:
    error = await translated(RedisTimeoutError("Timeout reading from 127.0.0.1:6390"))
    assert type(error) is StoreTimeout
    assert str(error) == f"{STORE}: timed out (Timeout reading from 127.0.0.1:6390)"


async def test_a_timed_out_write_says_its_outcome_is_unknown_and_repeating_it_is_safe() -> None:
    error = await translated(RedisTimeoutError("Timeout reading"), write="revocation")
    assert type(error) is StoreTimeout
    assert str(error) == (
        f"{STORE}: timed out (Timeout reading); outcome unknown: the revocation may or may not have been applied "
        "(repeating it is safe)"
    )


@pytest.mark.parametrize(
    ("error", "says"),
    [
        # AuthenticationError is a ConnectionError: it must not read as "unreachable".
        (AuthenticationError("invalid username-password pair"), "authentication failed (invalid username-password"),
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:6390"), "unreachable (Error 111 connecting"),
        (ConnectionRefusedError(111, "Connection refused"), "unreachable ("),
        (
            ResponseError("NOPERM this user has no permissions to run the 'evalsha' command"),
            "refused the command (NOPERM",
        ),
        (RedisError("Connection closed by server."), "Connection closed by server."),
        (RedisClusterException("Redis Cluster cannot be connected"), "unreachable: no usable cluster node (Redis"),
    ],
)
async def test_each_failure_is_store_unavailable_naming_the_store_and_what_failed(
    error: BaseException, says: str
) -> None:
    translated_error = await translated(error, write="session create")
    assert type(translated_error) is StoreUnavailable
    assert str(translated_error).startswith(f"{STORE}: {says}")


async def test_a_write_refused_on_a_migrating_slot_says_it_was_not_applied_and_how_long_it_waited() -> None:
    error = await translated(TryAgainError("Multiple keys request during rehashing of slot"), "session create", 0.3)
    assert type(error) is StoreUnavailable
    assert str(error) == (
        f"{STORE}: the keys' Cluster slot is being migrated, and Redis refuses a multi-key session create there "
        "until it ends (TRYAGAIN for 0.3s); this step was not applied: retry"
    )


async def test_a_read_refused_on_a_migrating_slot_without_waiting_says_so() -> None:
    error = await translated(TryAgainError("Multiple keys request during rehashing of slot"))
    assert str(error) == (
        f"{STORE}: the keys' Cluster slot is being migrated, and Redis refuses a multi-key read there until it ends "
        "(TRYAGAIN); this step was not applied: retry"
    )


async def test_the_redis_exception_is_not_chained_so_no_traceback_shows_its_internals() -> None:
    error = await translated(RedisConnectionError("Error 111"))
    assert error.__cause__ is None and error.__suppress_context__


async def test_other_exceptions_pass_through_unchanged() -> None:
    own = StoreUnavailable("already translated")
    with pytest.raises(StoreUnavailable) as caught:
        async with store_errors(STORE):
            raise own
    assert caught.value is own
    with pytest.raises(ValueError, match="not a redis error"):
        async with store_errors(STORE):
            raise ValueError("not a redis error")


async def test_nothing_raised_means_nothing_changed() -> None:
    async with store_errors(STORE, "revocation"):
        answer = 1
    assert answer == 1
