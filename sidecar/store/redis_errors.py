"""redis-py's exceptions as the store's: every Redis failure a reader or writer meets becomes a ``StoreError``
whose message names the store (never its password) and what failed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.exceptions import AuthenticationError, RedisClusterException, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.errors import StoreTimeout, StoreUnavailable


@contextlib.asynccontextmanager
async def store_errors(
    description: str, write: str | None = None, *, tryagain_waited: float = 0.0
) -> AsyncIterator[None]:
    """Commands under this raise StoreTimeout or StoreUnavailable instead of redis-py's exceptions.

    ``write`` names the write under way: a timeout leaves its outcome unknown, and the message says so (the store's
    writes are idempotent, so it also says repeating one is safe). ``tryagain_waited``: how long the caller waited
    out a migrating Cluster slot's TRYAGAIN before giving up (0: not at all)."""
    try:
        yield
    except RedisTimeoutError as exc:
        if write is None:
            raise StoreTimeout(f"{description}: timed out ({exc})") from None
        raise StoreTimeout(
            f"{description}: timed out ({exc}); outcome unknown: the {write} may or may not have been "
            "applied (repeating it is safe)"
        ) from None
    except AuthenticationError as exc:
        raise StoreUnavailable(f"{description}: authentication failed ({exc})") from None
    except (RedisConnectionError, OSError) as exc:
        raise StoreUnavailable(f"{description}: unreachable ({exc})") from None
    except TryAgainError:
        waited = f" for {tryagain_waited:.1f}s" if tryagain_waited > 0 else ""
        raise StoreUnavailable(
            f"{description}: the keys' Cluster slot is being migrated, and Redis refuses a multi-key "
            f"{write or 'read'} there until it ends (TRYAGAIN{waited}); this step was not applied: retry"
        ) from None
    except ResponseError as exc:
        raise StoreUnavailable(f"{description}: refused the command ({exc})") from None
    except RedisError as exc:
        raise StoreUnavailable(f"{description}: {exc}") from None
    except RedisClusterException as exc:
        # Not a RedisError: what redis-py's Cluster client raises when no node answers (or none covers a slot).
        raise StoreUnavailable(f"{description}: unreachable: no usable cluster node ({exc})") from None
