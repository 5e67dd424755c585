"""redacted and repr: what config check prints and what a repr shows; no output or problem echoes a secret."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from sidecar.config import Config, load_config, redacted
from sidecar.core.durations import parse_duration
from tests.unit.config.support import OTHER, SECRET, SECRET_BYTES, problems_of

REDIS_CONNECTION_DEFAULTS = {
    "username": "",
    "password": "",
    "password_file": "",
    "sentinel_username": "",
    "sentinel_password": "",
    "sentinel_password_file": "",
    "tls_ca_file": "",
    "tls_cert_file": "",
    "tls_key_file": "",
    "tls_verify": True,
    "max_connections": 64,
    "failure_policy": "deny",
    "stale_for": "30s",
}


def test_redacted_defaults_render_as_contract_yaml() -> None:
    assert redacted(load_config(environ={})) == {
        "listen": {
            "grpc": "127.0.0.1:9191",
            "http": "127.0.0.1:9192",
            "admin": "127.0.0.1:9090",
            "api": "",
            "idle_timeout": "1m",
            "max_connections": 1000,
            "grpc_threads": 4,
        },
        "redis": {
            "url": "redis://127.0.0.1:6379/0",
            "key_prefix": "sidecar:",
            "timeout": "150ms",
            "wait_replicas": 1,
            "wait_timeout": "500ms",
            **REDIS_CONNECTION_DEFAULTS,
        },
        "cookie": {"name": "SESSION", "strip_upstream": True},
        "session": {
            "idle_timeout": "30m",
            "absolute_timeout": "12h",
            "max_per_user": 0,
            "encryption_keys": [],
            "accept_unsealed": False,
        },
        "headers": {
            "user_id": "x-user-id",
            "email": "x-user-email",
            "roles": "x-user-roles",
            "session": "x-session-id",
            "strip_prefixes": ["x-user-", "x-session-"],
            "max_bytes": 8192,
        },
        "deny": {"login_url": ""},
        "routes": [],
        "token": {"keys": []},
        "api": {"enabled": False, "token_file": ""},
        "cache": {"enabled": True, "ttl": "10s", "max_entries": 100000, "max_bytes": 67108864},
        "log": {"level": "info", "format": "json", "sample_allows": 0.01},
        "assertion": {
            "enabled": False,
            "header": "x-user-assertion",
            "keys": [],
            "issuer": "session-sidecar",
            "ttl": "1m",
            "claims": ["sub", "email", "roles", "sid"],
            "audience": "",
        },
        "forward_auth": {"trusted_hops": 0, "proxy": "any"},
        "sources": [{"kind": "native"}],
    }


def test_redacted_hides_redis_password_and_token_secrets_but_shows_everything_else() -> None:
    config = load_config(
        environ={
            "SIDECAR_REDIS__URL": "redis://app:hunter2@cache.internal:6379/0",
            "SIDECAR_TOKEN__KEYS": f"k1:{SECRET},k2:{OTHER}",
            "SIDECAR_ROUTES": "[{prefix: /admin, roles: [admin]}]",
            "SIDECAR_SESSION__IDLE_TIMEOUT": "90s",
        }
    )
    data = redacted(config)
    dumped = yaml.safe_dump(data)  # plain YAML-able data
    assert "hunter2" not in dumped
    assert SECRET not in dumped
    assert OTHER not in dumped
    assert data["redis"] == {
        "url": "redis://app:<redacted>@cache.internal:6379/0",
        "key_prefix": "sidecar:",
        "timeout": "150ms",
        "wait_replicas": 1,
        "wait_timeout": "500ms",
        **REDIS_CONNECTION_DEFAULTS,
    }
    assert data["token"] == {"keys": ["k1:<redacted>", "k2:<redacted>"]}
    assert data["routes"] == [{"prefix": "/admin", "public": False, "roles": ["admin"]}]
    assert data["session"] == {
        "idle_timeout": "90s",
        "absolute_timeout": "12h",
        "max_per_user": 0,
        "encryption_keys": [],
        "accept_unsealed": False,
    }
    assert data["cookie"] == {"name": "SESSION", "strip_upstream": True}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:<redacted>@h:6379/0"),
        ("rediss://user:p%40ss@h/0", "rediss://user:<redacted>@h/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
        ("redis://h:6379/0?password=pw&db=1", "redis://h:6379/0?password=<redacted>&db=1"),
        ("unix:///run/redis.sock?password=pw", "unix:///run/redis.sock?password=<redacted>"),
    ],
)
def test_redacted_redis_url_forms(url: str, shown: str) -> None:
    data = redacted(load_config(environ={"SIDECAR_REDIS__URL": url}))
    assert data["redis"]["url"] == shown  # type: ignore[index]


def test_repr_does_not_leak_secrets() -> None:
    config = load_config(
        environ={"SIDECAR_REDIS__URL": "redis://:hunter2@h:6379/0", "SIDECAR_TOKEN__KEYS": f"k1:{SECRET}"}
    )
    assert "hunter2" not in repr(config)
    assert repr(SECRET_BYTES) not in repr(config)


LEAK = "S3cr3tPa55w0rdXyZ"  # the secret text no output may contain (and long enough not to occur by chance)


LEAK_KEY = base64.urlsafe_b64encode(LEAK.encode() * 2).decode().rstrip("=")  # a base64url secret, 34 bytes


def leaky_configs(tmp_path: Path) -> list[tuple[str, dict[str, str]]]:
    """(what, environment) pairs: a malformed value of every secret-bearing key, each holding LEAK."""
    pasted_pem = "-----BEGIN PRIVATE KEY-----" + LEAK
    return [
        ("sentinel URL with a '/' in the password", {"SIDECAR_REDIS__URL": f"redis+sentinel://u:{LEAK}/x@h:26379/m"}),
        ("redis URL with a '/' in the password", {"SIDECAR_REDIS__URL": f"redis://u:{LEAK}/x@h:6379/0"}),
        ("rediss URL with a '?' in the password", {"SIDECAR_REDIS__URL": f"rediss://u:{LEAK}?x@h:6379/0"}),
        ("cluster URL with a '#' in the password", {"SIDECAR_REDIS__URL": f"redis+cluster://u:{LEAK}#x@h:7000"}),
        ("URL without a scheme", {"SIDECAR_REDIS__URL": f"u:{LEAK}@h:6379"}),
        ("URL with an unknown scheme", {"SIDECAR_REDIS__URL": f"http://u:{LEAK}@h:6379"}),
        ("query password with a '#'", {"SIDECAR_REDIS__URL": f"redis://h:6379/0?password=a#{LEAK}"}),
        ("URL with a bad port", {"SIDECAR_REDIS__URL": f"redis://u:{LEAK}@h:port/0"}),
        ("token key back to front", {"SIDECAR_TOKEN__KEYS": f"{LEAK_KEY}:k1"}),
        ("short token key back to front", {"SIDECAR_TOKEN__KEYS": f"{LEAK[:16]}:k1"}),
        ("token key not base64url", {"SIDECAR_TOKEN__KEYS": f"k1:{LEAK}+/"}),
        ("token key too short", {"SIDECAR_TOKEN__KEYS": f"k1:{LEAK}"}),
        ("token key without a colon", {"SIDECAR_TOKEN__KEYS": LEAK_KEY}),
        ("encryption key back to front", {"SIDECAR_SESSION__ENCRYPTION_KEYS": f"{LEAK_KEY}:e1"}),
        ("encryption key of the wrong length", {"SIDECAR_SESSION__ENCRYPTION_KEYS": f"e1:{LEAK_KEY}"}),
        ("password pasted as its file", {"SIDECAR_REDIS__PASSWORD_FILE": LEAK}),
        ("sentinel password pasted as its file", {"SIDECAR_REDIS__SENTINEL_PASSWORD_FILE": LEAK}),
        ("password and its file both given", {"SIDECAR_REDIS__PASSWORD": LEAK, "SIDECAR_REDIS__PASSWORD_FILE": "/x"}),
        ("API token pasted as its file", {"SIDECAR_API__ENABLED": "true", "SIDECAR_API__TOKEN_FILE": LEAK}),
        ("API token written in the config", {"SIDECAR_API__TOKEN": LEAK}),
        ("PEM pasted as the assertion key file", {"SIDECAR_ASSERTION__KEYS": f"k1:{pasted_pem}"}),
        ("PEM pasted as the assertion key id", {"SIDECAR_ASSERTION__KEYS": f"{pasted_pem}:/tmp/k.pem"}),
        ("TLS key pasted as its file", {"SIDECAR_REDIS__TLS_KEY_FILE": LEAK, "SIDECAR_REDIS__TLS_CERT_FILE": LEAK}),
        ("login URL with credentials", {"SIDECAR_DENY__LOGIN_URL": f"https://u:{LEAK}/x@login.example.com"}),
    ]


def test_no_problem_message_echoes_a_malformed_secret(tmp_path: Path) -> None:
    for what, environ in leaky_configs(tmp_path):
        found = problems_of(environ=environ)
        assert found, what
        assert not any(LEAK in problem or LEAK[:16] in problem for problem in found), (what, found)


def test_repr_hides_the_password_of_the_login_url() -> None:
    config = load_config(environ={"SIDECAR_DENY__LOGIN_URL": "https://u:hunter2@login.example.com/start"})
    assert "hunter2" not in repr(config) and "login.example.com" in repr(config)


def _models(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """``model`` and every model its fields hold, directly or in a tuple."""
    yield model
    for field in model.model_fields.values():
        for held in (field.annotation, *getattr(field.annotation, "__args__", ())):
            inner = getattr(held, "__origin__", held)  # Annotated[X, ...] -> X
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from _models(inner)


def test_every_duration_setting_is_shown_as_a_duration() -> None:
    config = Config()
    data = redacted(config)
    checked = 0
    for section in Config.model_fields:
        value = getattr(config, section)
        for name in getattr(type(value), "model_fields", {}):
            if name.endswith(("timeout", "ttl", "stale_for")):
                shown = data[section][name]  # type: ignore[index]
                assert isinstance(shown, str) and parse_duration(shown) == getattr(value, name), (section, name)
                checked += 1
    assert checked == 8


def test_every_secret_field_is_left_out_of_repr_and_of_config_check() -> None:
    secret_like = [
        (model, name)
        for model in _models(Config)
        for name, field in model.model_fields.items()
        if field.annotation in (str, bytes)  # a value, not a section
        and any(word in name for word in ("password", "secret", "token", "pem"))
        and not name.endswith("_file")
    ]
    assert {name for _, name in secret_like} == {"password", "sentinel_password", "secret", "token", "private_key_pem"}
    for model, name in secret_like:
        assert model.model_fields[name].repr is False, (model.__name__, name)
    config = load_config(
        environ={
            "SIDECAR_REDIS__PASSWORD": LEAK,
            "SIDECAR_REDIS__SENTINEL_PASSWORD": LEAK,
            "SIDECAR_TOKEN__KEYS": f"k1:{LEAK_KEY}",
        }
    )
    assert LEAK not in yaml.safe_dump(redacted(config)) and LEAK not in repr(config)
