"""Whether the server's ``maxmemory-policy`` may evict the shared key ring, which has no TTL."""

from __future__ import annotations

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.store.connect import RedisClient
from sidecar.store.redis_commands import reply_text

_EVICTION_ADVICE = (
    "set token.keys in production (the ring in {0} is then unused), or set maxmemory-policy to noeviction or a "
    "volatile-* policy"
)


async def keyring_eviction_warning(client: RedisClient, description: str, keyring_key: str) -> str | None:
    """One line to log when a primary's policy may evict ``keyring_key``, else None; never raises.

    Only ``allkeys-*`` policies can evict a key without a TTL; ``noeviction`` and ``volatile-*`` are fine. Servers
    that refuse CONFIG GET (ACLs, managed Redis) get a line saying it could not be checked."""
    what, advice = f"{description}: maxmemory-policy", _EVICTION_ADVICE.format(keyring_key)
    try:
        policies = await _eviction_policies(client)
    except RedisTimeoutError as exc:
        return f"{what} could not be checked (timed out: {exc}); {advice}"
    except (RedisError, RedisClusterException, OSError) as exc:
        return f"{what} could not be checked ({exc}); {advice}"
    if not policies:
        return f"{what} could not be checked (CONFIG GET answered nothing); {advice}"
    evicting = sorted({p for p in policies if not (p == "noeviction" or p.startswith("volatile-"))})
    if not evicting:
        return None
    return (
        f"{what} is {', '.join(evicting)}: the server may evict keys without a TTL, such as the shared token key "
        f"ring {keyring_key}, which logs every user out once a new key is minted; {advice}"
    )


async def _eviction_policies(client: RedisClient) -> list[str]:
    """The policy of every primary (in a Cluster each may differ)."""
    if isinstance(client, RedisCluster):
        answer = await client.config_get("maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)
    else:
        answer = await client.config_get("maxmemory-policy")
    found: list[str] = []

    def collect(value: object) -> None:  # one node answers {name: value}, several {node: {name: value}}
        if isinstance(value, dict):
            for inner in value.values():
                collect(inner)
        else:
            found.append(reply_text(value).strip().lower())

    collect(answer)
    return found
