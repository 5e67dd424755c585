"""redis-py's exceptions as the store's: every Redis failure a reader or writer meets becomes a ``StoreError``
whose message names the store (never its password) and what failed."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from redis.exceptions import AuthenticationError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.errors import StoreTimeout, StoreUnavailable


@contextlib.asynccontextmanager
async def store_errors(description: str) -> AsyncIterator[None]:
    """Reads under this raise StoreTimeout or StoreUnavailable instead of redis-py's exceptions."""
    try:
        yield
    except RedisTimeoutError as exc:
        raise StoreTimeout(f"{description}: timed out ({exc})") from None
    except AuthenticationError as exc:
        raise StoreUnavailable(f"{description}: authentication failed ({exc})") from None
    except (RedisConnectionError, OSError) as exc:
        raise StoreUnavailable(f"{description}: unreachable ({exc})") from None
    except ResponseError as exc:
        raise StoreUnavailable(f"{description}: refused the command ({exc})") from None
    except RedisError as exc:
        raise StoreUnavailable(f"{description}: {exc}") from None
    except RedisClusterException as exc:
        # Not a RedisError: what redis-py's Cluster client raises when no node answers (or none covers a slot).
        raise StoreUnavailable(f"{description}: unreachable: no usable cluster node ({exc})") from None
