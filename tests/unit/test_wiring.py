"""What the config wires together (sidecar.wiring): the assertion reload on SIGHUP, the native source's memories, the
forward-auth trust, the session sources and their cookies."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sidecar.authz.forwarded import PROXIES, ForwardedTrust
from sidecar.config import FORWARD_AUTH_PROXIES, Config, load_config
from sidecar.core.session import SessionRecord
from sidecar.keyring import KeyRingSource
from sidecar.sources.configured import configured_sources
from sidecar.store.connect import RedisSettings
from sidecar.store.redis import RedisStore
from sidecar.wiring import (
    SwappableAssertions,
    assertion_issuer,
    edge_settings,
    forwarded_trust,
    native_source,
    reload_assertions,
)

RECORD = SessionRecord(session_id="sid-1", user_id="alice", email=None, roles=())


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for kid in ("k1", "k2"):
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        paths[kid] = tmp_path / f"{kid}.pem"
        paths[kid].write_bytes(pem)
    return paths


def config_with(keys: dict[str, Path], *kids: str, enabled: bool = True, **extra: str) -> Config:
    environ = {
        "SIDECAR_ASSERTION__ENABLED": "true" if enabled else "false",
        "SIDECAR_ASSERTION__KEYS": ",".join(f"{kid}:{keys[kid]}" for kid in kids),
        **extra,
    }
    return load_config(environ=environ)


def kid_of(assertions: SwappableAssertions) -> str:
    token = assertions.issue(RECORD, "app.example.com", {}, 1_800_000_000.0)
    assert token is not None
    return str(jwt.get_unverified_header(token)["kid"])


def test_sighup_swaps_in_the_new_keys_for_signing_and_the_jwks(keys: dict[str, Path]) -> None:
    running = config_with(keys, "k1")
    assertions = assertion_issuer(running)
    assert assertions is not None and kid_of(assertions) == "k1"
    note = reload_assertions(running, config_with(keys, "k2", "k1"), assertions)
    assert note == "assertion keys reloaded: k2 signs, k2, k1 published"
    assert kid_of(assertions) == "k2"
    assert b'"kid":"k1"' in assertions.jwks_json() and b'"kid":"k2"' in assertions.jwks_json()


def test_a_reload_that_cannot_load_its_keys_keeps_the_old_ones(keys: dict[str, Path]) -> None:
    running = config_with(keys, "k1")
    assertions = assertion_issuer(running)
    assert assertions is not None
    broken = running.model_copy(
        update={"assertion": running.assertion.model_copy(update={"ttl": 10_000.0})}  # past what the issuer takes
    )
    note = reload_assertions(running, broken, assertions)
    assert note.startswith("assertion keys not reloaded, the old ones stay in use:")
    assert kid_of(assertions) == "k1"


def test_turning_assertions_on_or_off_needs_a_restart(keys: dict[str, Path]) -> None:
    off = config_with(keys, "k1", enabled=False)
    assert assertion_issuer(off) is None
    assert reload_assertions(off, config_with(keys, "k1"), None) == (
        "assertion.enabled changed or is off: restart to apply"
    )


def test_other_changed_settings_are_named_as_waiting_for_a_restart(keys: dict[str, Path]) -> None:
    running = config_with(keys, "k1")
    assertions = assertion_issuer(running)
    fresh = config_with(keys, "k2", SIDECAR_LOG__LEVEL="debug")
    note = reload_assertions(running, fresh, assertions)
    assert note.endswith("; other changed settings need a restart") and assertions is not None
    assert kid_of(assertions) == "k2"


@pytest.mark.parametrize(
    ("environ", "cache", "stale"),
    [
        ({"SIDECAR_REDIS__FAILURE_POLICY": "deny"}, True, False),
        ({"SIDECAR_REDIS__FAILURE_POLICY": "stale", "SIDECAR_REDIS__STALE_FOR": "20s"}, True, True),
        ({"SIDECAR_CACHE__ENABLED": "false"}, False, False),
    ],
    ids=["deny", "stale", "no_cache"],
)
async def test_the_native_source_gets_the_memories_the_config_asks_for(
    environ: dict[str, str], cache: bool, stale: bool
) -> None:
    config = load_config(environ=environ)
    store = RedisStore.connect(RedisSettings(url="redis://127.0.0.1:1/0", timeout=0.1), "t:")
    try:
        source, listener = native_source(config, store, store, KeyRingSource(store, None))
        assert (source.cache is not None, listener is not None) == (cache, cache)
        assert (source.stale is not None) is stale
        assert source.cookie_names == (config.cookie.name,)
        assert edge_settings(config, (source,)).cookie_names == (config.cookie.name,)
    finally:
        await store.close()


def test_the_config_offers_exactly_the_proxies_the_http_adapter_knows() -> None:
    assert sorted(FORWARD_AUTH_PROXIES) == sorted(PROXIES)


@pytest.mark.parametrize("proxy", FORWARD_AUTH_PROXIES)
def test_forward_auth_settings_reach_the_http_adapter_as_configured(proxy: str) -> None:
    environ = {"SIDECAR_FORWARD_AUTH__PROXY": proxy, "SIDECAR_FORWARD_AUTH__TRUSTED_HOPS": "3"}
    assert forwarded_trust(load_config(environ=environ)) == ForwardedTrust(proxy=proxy, trusted_hops=3)


def test_every_sources_cookie_is_a_session_cookie_and_the_first_one_is_named_in_the_challenge(tmp_path: Path) -> None:
    secrets = tmp_path / "express-secrets"
    secrets.write_text("an-express-app-secret\n")
    config = Config.model_validate(
        {"sources": [{"kind": "django"}, {"kind": "native"}, {"kind": "express", "secrets_file": str(secrets)}]}
    )
    store = RedisStore.connect(RedisSettings(url="redis://127.0.0.1:1/0", timeout=0.1), "t:")
    native, _ = native_source(config, store, store, KeyRingSource(store, None))
    sources, closers = configured_sources(config, native, store.client)
    assert [source.name for source in sources] == ["django", "native", "express"]
    assert closers == []  # every source reads the sidecar's own Redis: no client of their own
    settings = edge_settings(config, sources)
    assert settings.cookie_name == "sessionid"
    assert settings.cookie_names == ("sessionid", "SESSION", "connect.sid")


def test_a_source_on_its_own_redis_gets_one_client_closed_with_the_sidecar() -> None:
    own = {"url": "redis://127.0.0.1:1/3"}
    config = Config.model_validate({"sources": [{"kind": "php", "redis": own}, {"kind": "rails", "redis": own}]})
    store = RedisStore.connect(RedisSettings(url="redis://127.0.0.1:1/0", timeout=0.1), "t:")
    native, _ = native_source(config, store, store, KeyRingSource(store, None))
    sources, closers = configured_sources(config, native, store.client)
    assert [source.name for source in sources] == ["php", "rails"]
    assert len(closers) == 1  # one client for the one distinct redis entry
