"""load_config: CONTRACT.md defaults, the YAML file, SIDECAR_* overrides, all problems at once; redacted."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sidecar.config import (
    MAX_CONFIG_BYTES,
    MAX_ROUTES,
    MAX_SECRET_FILE_BYTES,
    Config,
    RouteConfig,
    SigningKey,
    load_config,
    redacted,
)
from sidecar.errors import BadInput, ConfigError

SECRET_BYTES = bytes(range(32))
SECRET = base64.urlsafe_b64encode(SECRET_BYTES).decode().rstrip("=")
OTHER_BYTES = b"\xff" * 40
OTHER = base64.urlsafe_b64encode(OTHER_BYTES).decode()  # with padding
PREFIXES3 = ("x-user-", "x-session-", "x-a-")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems_of(path: str | None = None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return info.value.problems


def only_problem(path: str | None = None, environ: dict[str, str] | None = None) -> str:
    found = problems_of(path, environ)
    assert len(found) == 1, found
    return found[0]


# --- defaults and the file ----------------------------------------------------------------------------------


def test_defaults_equal_the_contract() -> None:
    config = load_config(environ={})
    assert config.listen.grpc == "127.0.0.1:9191"
    assert config.listen.http == "127.0.0.1:9192"
    assert config.listen.admin == "127.0.0.1:9090"
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert config.redis.key_prefix == "sidecar:"
    assert config.redis.timeout == 0.15
    assert config.cookie.name == "SESSION"
    assert config.cookie.strip_upstream is True
    assert config.session.idle_timeout == 1800.0
    assert config.session.absolute_timeout == 43200.0
    assert config.headers.user_id == "x-user-id"
    assert config.headers.email == "x-user-email"
    assert config.headers.roles == "x-user-roles"
    assert config.headers.session == "x-session-id"
    assert config.headers.strip_prefixes == ("x-user-", "x-session-")
    assert config.deny.login_url == ""
    assert config.routes == ()
    assert config.token.keys == ()
    assert config.log.level == "info"
    assert (config.listen.api, config.listen.idle_timeout, config.listen.max_connections) == ("", 60.0, 1000)
    assert (config.forward_auth.trusted_hops, config.forward_auth.proxy) == (0, "any")


def test_defaults_validate_and_equal_an_empty_model() -> None:
    assert load_config(environ={}) == Config() == Config.model_validate({})


@pytest.mark.parametrize("text", ["", "# only a comment\n", "routes:\nredis:\n"])
def test_empty_file_or_empty_sections_mean_defaults(tmp_path: Path, text: str) -> None:
    assert load_config(write(tmp_path, text), environ={}) == Config()


def test_file_values_are_loaded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
listen: {{grpc: "0.0.0.0:9191", http: "", admin: "[::1]:9090"}}
redis:
  url: rediss://cache.internal:6380/2
  key_prefix: "app:"
  timeout: 90ms
cookie: {{name: __Host-session, strip_upstream: false}}
session: {{idle_timeout: 15m, absolute_timeout: 1d}}
headers:
  user_id: x-auth-user
  email: x-auth-email
  roles: x-auth-roles
  session: x-auth-session
  strip_prefixes: [x-auth-]
deny: {{login_url: "https://login.example.com/start"}}
routes:
  - {{prefix: /public, public: true}}
  - prefix: /admin
    roles: [admin, ops]
token: {{keys: ["k1:{SECRET}", "k2:{OTHER}"]}}
log: {{level: DEBUG}}
""",
    )
    config = load_config(path, environ={})
    assert (config.listen.grpc, config.listen.http, config.listen.admin) == ("0.0.0.0:9191", "", "[::1]:9090")
    assert config.redis.url == "rediss://cache.internal:6380/2"
    assert config.redis.key_prefix == "app:"
    assert config.redis.timeout == 0.09
    assert config.cookie.name == "__Host-session"
    assert config.cookie.strip_upstream is False
    assert (config.session.idle_timeout, config.session.absolute_timeout) == (900.0, 86400.0)
    assert config.headers.user_id == "x-auth-user"
    assert config.headers.strip_prefixes == ("x-auth-",)
    assert config.deny.login_url == "https://login.example.com/start"
    assert config.routes == (
        RouteConfig(prefix="/public", public=True),
        RouteConfig(prefix="/admin", roles=("admin", "ops")),
    )
    assert config.token.keys == (
        SigningKey(kid="k1", secret=SECRET_BYTES),
        SigningKey(kid="k2", secret=OTHER_BYTES),
    )
    assert config.log.level == "debug"


@pytest.mark.parametrize("value", ["90", "90s", "1.5m", "90000ms"])
def test_durations_accept_every_form_and_are_stored_as_seconds(tmp_path: Path, value: str) -> None:
    config = load_config(write(tmp_path, f"session: {{idle_timeout: {value}}}"), environ={})
    assert config.session.idle_timeout == 90.0


def test_path_comes_from_sidecar_config_when_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, "cookie: {name: FROM_FILE}")
    assert load_config(environ={"SIDECAR_CONFIG": path}).cookie.name == "FROM_FILE"


def test_explicit_path_wins_over_sidecar_config(tmp_path: Path) -> None:
    path = write(tmp_path, "cookie: {name: EXPLICIT}")
    config = load_config(path, environ={"SIDECAR_CONFIG": str(tmp_path / "missing.yaml")})
    assert config.cookie.name == "EXPLICIT"


def test_config_is_frozen() -> None:
    config = load_config(environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.cookie.name = "OTHER"


# --- environment overrides ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("SIDECAR_REDIS__URL", "redis://other:6379/1", ("redis", "url"), "redis://other:6379/1"),
        ("SIDECAR_REDIS__KEY_PREFIX", "1:20", ("redis", "key_prefix"), "1:20"),
        ("SIDECAR_DENY__LOGIN_URL", "", ("deny", "login_url"), ""),
        ("SIDECAR_LISTEN__HTTP", "", ("listen", "http"), ""),
        ("SIDECAR_COOKIE__STRIP_UPSTREAM", "false", ("cookie", "strip_upstream"), False),
        ("SIDECAR_COOKIE__STRIP_UPSTREAM", "true", ("cookie", "strip_upstream"), True),
        ("SIDECAR_REDIS__TIMEOUT", "250ms", ("redis", "timeout"), 0.25),
        ("SIDECAR_SESSION__IDLE_TIMEOUT", "60", ("session", "idle_timeout"), 60.0),
        ("SIDECAR_HEADERS__STRIP_PREFIXES", "[x-]", ("headers", "strip_prefixes"), ("x-",)),
        (
            "SIDECAR_HEADERS__STRIP_PREFIXES",
            "x-user-,x-session-,x-a-",
            ("headers", "strip_prefixes"),
            PREFIXES3,
        ),
        ("SIDECAR_LOG__LEVEL", "warning", ("log", "level"), "warning"),
        ("sidecar_cookie__name", "lower", ("cookie", "name"), "lower"),
        ("SIDECAR_Cookie__Name", "mixed", ("cookie", "name"), "mixed"),
    ],
)
def test_env_overrides_each_type(name: str, value: str, attribute: tuple[str, str], expected: object) -> None:
    config = load_config(environ={name: value})
    assert getattr(getattr(config, attribute[0]), attribute[1]) == expected


def test_listener_limits_and_forward_auth_load_from_file_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen: {api: '127.0.0.1:9393', idle_timeout: 90s, max_connections: 50}\n"
        "forward_auth: {trusted_hops: 2, proxy: Traefik}\n",
    )
    config = load_config(path, environ={"SIDECAR_FORWARD_AUTH__PROXY": "ingress-nginx"})
    assert (config.listen.api, config.listen.idle_timeout, config.listen.max_connections) == ("127.0.0.1:9393", 90, 50)
    assert (config.forward_auth.trusted_hops, config.forward_auth.proxy) == (2, "ingress-nginx")
    shown = redacted(load_config(path, environ={}))
    assert shown["listen"]["idle_timeout"] == "90s"  # type: ignore[index]
    assert shown["forward_auth"] == {"trusted_hops": 2, "proxy": "traefik"}


def test_problems_with_the_new_listener_keys_are_reported_together(tmp_path: Path) -> None:
    environ = {
        "SIDECAR_LISTEN__IDLE_TIMEOUT": "0.5s",
        "SIDECAR_LISTEN__MAX_CONNECTIONS": "0",
        "SIDECAR_FORWARD_AUTH__TRUSTED_HOPS": "11",
        "SIDECAR_FORWARD_AUTH__PROXY": "haproxy",
    }
    found = problems_of(environ=environ)
    assert [p.split(":")[0] for p in found] == [
        "listen.idle_timeout",
        "listen.max_connections",
        "forward_auth.trusted_hops",
        "forward_auth.proxy",
    ]


def test_ephemeral_api_port_may_repeat_another_listeners() -> None:
    config = load_config(environ={"SIDECAR_LISTEN__GRPC": "127.0.0.1:0", "SIDECAR_LISTEN__API": "127.0.0.1:0"})
    assert config.listen.api == "127.0.0.1:0"


def test_env_routes_as_a_yaml_flow_list() -> None:
    config = load_config(environ={"SIDECAR_ROUTES": "[{prefix: /public, public: true}, {prefix: /a, roles: [x]}]"})
    assert config.routes == (
        RouteConfig(prefix="/public", public=True),
        RouteConfig(prefix="/a", roles=("x",)),
    )


@pytest.mark.parametrize(
    "value",
    [f"k1:{SECRET},k2:{OTHER}", f" k1:{SECRET} , k2:{OTHER} ", f'["k1:{SECRET}", "k2:{OTHER}"]'],
)
def test_env_token_keys_in_comma_or_list_form(value: str) -> None:
    config = load_config(environ={"SIDECAR_TOKEN__KEYS": value})
    assert [key.kid for key in config.token.keys] == ["k1", "k2"]
    assert config.token.keys[0].secret == SECRET_BYTES
    assert config.token.keys[1].secret == OTHER_BYTES


def test_env_whole_section_merges_with_the_file_and_keys_override_it(tmp_path: Path) -> None:
    path = write(tmp_path, "redis: {key_prefix: 'file:', url: 'redis://file:6379/0'}")
    config = load_config(
        path,
        environ={
            "SIDECAR_REDIS": "{url: 'redis://section:6379/0', timeout: 1s}",
            "SIDECAR_REDIS__TIMEOUT": "2s",
        },
    )
    assert config.redis.key_prefix == "file:"
    assert config.redis.url == "redis://section:6379/0"
    assert config.redis.timeout == 2.0


def test_env_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "cookie: {name: FILE, strip_upstream: true}\nroutes: [{prefix: /file}]")
    config = load_config(
        path, environ={"SIDECAR_COOKIE__NAME": "ENV", "SIDECAR_ROUTES": "[{prefix: /env, public: true}]"}
    )
    assert config.cookie.name == "ENV"
    assert config.cookie.strip_upstream is True  # the file's other keys stay
    assert config.routes == (RouteConfig(prefix="/env", public=True),)


def test_unrelated_and_config_variables_are_not_overrides() -> None:
    assert load_config(environ={"SIDECAR_CONFIG": "", "SIDECAR_SOMETHING": "x", "PATH": "/bin"}) == Config()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("SIDECAR_BOGUS__KEY", "environment variable SIDECAR_BOGUS__KEY: unknown section 'bogus'"),
        ("SIDECAR_REDIS__PASSWORDS", "environment variable SIDECAR_REDIS__PASSWORDS: unknown key 'passwords'"),
        ("SIDECAR_REDIS__URL__X", "environment variable SIDECAR_REDIS__URL__X: unknown key"),
        ("SIDECAR_ROUTES__PREFIX", "environment variable SIDECAR_ROUTES__PREFIX: routes is a list"),
    ],
)
def test_unknown_env_key_is_an_error(name: str, fragment: str) -> None:
    assert fragment in only_problem(environ={name: "1"})


def test_a_problem_from_env_names_the_variable() -> None:
    problem = only_problem(environ={"SIDECAR_REDIS__TIMEOUT": "fast"})
    assert problem == (
        "redis.timeout: invalid duration 'fast' (use 150ms, 90s, 30m, 12h, 7d or plain seconds)"
        " (from SIDECAR_REDIS__TIMEOUT)"
    )


def test_a_problem_inside_an_env_list_names_the_variable() -> None:
    problem = only_problem(environ={"SIDECAR_ROUTES": "[{prefix: /ok}, {prefix: nope}]"})
    assert problem == 'routes[1].prefix: must start with "/" (from SIDECAR_ROUTES)'


# --- problems -----------------------------------------------------------------------------------------------


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    assert only_problem(write(tmp_path, "listen: {bogus: 1}")) == "listen.bogus: unknown key"


def test_unknown_section_in_file_is_an_error(tmp_path: Path) -> None:
    assert only_problem(write(tmp_path, "bogus: {a: 1}")) == "bogus: unknown key"


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
listen: {bogus: 1}
redis: {timeout: fast}
cookie: {name: "bad name"}
routes: [{prefix: /ok}, {prefix: nope}]
""",
    )
    found = problems_of(path, {"SIDECAR_LOG__LEVEL": "loud", "SIDECAR_NOPE__X": "1"})
    text = "\n".join(found)
    assert len(found) == 6, found
    for fragment in [
        "listen.bogus: unknown key",
        "redis.timeout: invalid duration 'fast'",
        "cookie.name: invalid cookie name 'bad name'",
        'routes[1].prefix: must start with "/"',
        "log.level: must be one of debug, info, warning, error (got 'loud') (from SIDECAR_LOG__LEVEL)",
        "environment variable SIDECAR_NOPE__X: unknown section 'nope'",
    ]:
        assert fragment in text


def test_config_error_is_bad_input_with_every_problem_in_its_message(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        load_config(write(tmp_path, "redis: {timeout: 0}\ncookie: {name: ''}"), environ={})
    assert "redis.timeout" in str(info.value)
    assert "cookie.name" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # types
        ("redis: 5", "redis: must be a mapping"),
        ("cookie: {name: 123}", "cookie.name: must be a string"),
        ("cookie: {strip_upstream: maybe}", "cookie.strip_upstream: must be true or false"),
        ("routes: {prefix: /a}", "routes: must be a list"),
        ("routes: [/a]", "routes[0]: must be a mapping"),
        ("routes: [{public: true}]", "routes[0].prefix: is required"),
        # listen
        ("listen: {grpc: ''}", "listen.grpc: must be set"),
        ("listen: {grpc: '9191'}", "listen.grpc: invalid address '9191'"),
        (
            "listen: {http: 'localhost:99999'}",
            "listen.http: invalid address 'localhost:99999': port must be 0-65535",
        ),
        ("listen: {admin: '[nope]:1'}", "listen.admin: invalid address '[nope]:1'"),
        ("listen: {admin: '127.0.0.1:9191'}", "listen.admin: same address as listen.grpc (127.0.0.1:9191)"),
        ("listen: {api: '127.0.0.1:9191'}", "listen.api: same address as listen.grpc (127.0.0.1:9191)"),
        ("listen: {api: '127.0.0.1:9090'}", "listen.api: same address as listen.admin (127.0.0.1:9090)"),
        ("listen: {api: 'nohost'}", "listen.api: invalid address 'nohost'"),
        ("listen: {idle_timeout: 500ms}", "listen.idle_timeout: must be between 1s and 1h (got 500ms)"),
        ("listen: {idle_timeout: 2h}", "listen.idle_timeout: must be between 1s and 1h (got 2h)"),
        ("listen: {idle_timeout: soon}", "listen.idle_timeout: invalid duration 'soon'"),
        ("listen: {max_connections: 0}", "listen.max_connections: must be at least 1"),
        ("listen: {max_connections: 100001}", "listen.max_connections: must be at most 100000"),
        ("listen: {max_connections: many}", "listen.max_connections: must be an integer"),
        # forward_auth
        ("forward_auth: {trusted_hops: -1}", "forward_auth.trusted_hops: must be at least 0"),
        ("forward_auth: {trusted_hops: 11}", "forward_auth.trusted_hops: must be at most 10"),
        (
            "forward_auth: {proxy: caddy}",
            "forward_auth.proxy: must be one of any, envoy, nginx, traefik, ingress-nginx (got 'caddy')",
        ),
        ("forward_auth: {proxi: nginx}", "forward_auth.proxi: unknown key"),
        # redis
        ("redis: {url: 'http://x:1'}", "redis.url: unsupported URL 'http://x:1'"),
        ("redis: {url: 'redis://:6379'}", "redis.url: 'redis://:6379' has no host"),
        ("redis: {url: 'redis://h:port/0'}", "redis.url: 'redis://h:port/0' has an invalid port"),
        ("redis: {url: 'unix://'}", "redis.url: a unix:// URL needs a socket path"),
        ("redis: {key_prefix: 'a b'}", "redis.key_prefix: must not contain whitespace"),
        ("redis: {timeout: -1s}", "redis.timeout: invalid duration '-1s': must be greater than 0"),
        # cookie
        ("cookie: {name: 'a;b'}", "cookie.name: invalid cookie name 'a;b': must be an RFC 6265 token"),
        ("cookie: {name: 'a=b'}", "cookie.name: invalid cookie name 'a=b'"),
        ("cookie: {name: ''}", "cookie.name: invalid cookie name ''"),
        ('cookie: {name: "s\\u00e9ssion"}', "cookie.name: invalid cookie name"),
        # session
        (
            "session: {idle_timeout: 13h}",
            "session.idle_timeout: 13h exceeds session.absolute_timeout (12h); it must not",
        ),
        # headers
        (
            "headers: {email: x-email}",
            "headers.email: 'x-email' does not start with any of headers.strip_prefixes (x-user-, x-session-)",
        ),
        ("headers: {roles: x-user-id}", "headers.roles: same header as headers.user_id ('x-user-id')"),
        (
            "headers: {user_id: X-User-Id}",
            "headers.user_id: invalid header name 'X-User-Id': must be lowercase",
        ),
        (
            "headers: {user_id: 'x-user id'}",
            "headers.user_id: invalid header name 'x-user id': must be an HTTP token",
        ),
        ("headers: {strip_prefixes: []}", "headers.strip_prefixes: must list at least one prefix"),
        ("headers: {strip_prefixes: [x-user-, '']}", "headers.strip_prefixes[1]: invalid header prefix ''"),
        # deny
        ("deny: {login_url: /login}", 'deny.login_url: must be "" or an absolute http(s) URL'),
        ("deny: {login_url: 'ftp://x/'}", 'deny.login_url: must be "" or an absolute http(s) URL'),
        ("deny: {login_url: 'https://'}", 'deny.login_url: must be "" or an absolute http(s) URL'),
        ("deny: {login_url: 'https://a b/'}", 'deny.login_url: must be "" or an absolute http(s) URL'),
        # routes
        ("routes: [{prefix: admin}]", 'routes[0].prefix: must start with "/"'),
        ("routes: [{prefix: '/a?b'}]", "routes[0].prefix: invalid path prefix '/a?b'"),
        (
            "routes: [{prefix: /a, public: true, roles: [x]}]",
            "routes[0].roles: a public route cannot require roles",
        ),
        ("routes: [{prefix: /a, roles: ['a,b']}]", "routes[0].roles[0]: invalid role 'a,b'"),
        ("routes: [{prefix: /a, roles: ['a b']}]", "routes[0].roles[0]: invalid role 'a b'"),
        ("routes: [{prefix: /a, roles: ['']}]", "routes[0].roles[0]: must not be empty"),
        ("routes: [{prefix: /a}, {prefix: /a}]", "routes[1].prefix: duplicate of routes[0].prefix"),
        # token
        ("token: {keys: ['k1:c2hvcnQ']}", "token.keys[0]: the secret is 5 bytes; at least 32"),
        ("token: {keys: ['nocolon']}", "token.keys[0]: must be 'KID:SECRET'"),
        ("token: {keys: [':" + SECRET + "']}", "token.keys[0]: invalid key id: 1-16 characters"),
        ("token: {keys: ['waytoolongkeyid_17:" + SECRET + "']}", "token.keys[0]: invalid key id"),
        ("token: {keys: ['k1:not+base64/']}", "token.keys[0]: the secret (after the ':') is not base64url"),
        ("token: {keys: [{kid: k1}]}", "token.keys[0]: must be a 'KID:SECRET' string"),
        (f"token: {{keys: ['a:{SECRET}', 'a:{OTHER}']}}", "token.keys[1]: duplicate key id (the same as entry 0)"),
        # log
        ("log: {level: trace}", "log.level: must be one of debug, info, warning, error"),
    ],
)
def test_invalid_values_are_reported_with_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith(expected), problem
    assert "pydantic" not in problem


def test_problems_never_echo_a_token_secret(tmp_path: Path) -> None:
    short = base64.urlsafe_b64encode(b"s3cr3t-value").decode()
    found = problems_of(environ={"SIDECAR_TOKEN__KEYS": f"k1:{short},{SECRET}"})
    assert len(found) == 2
    assert all(short not in p and SECRET not in p for p in found)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:pw@cache:6380/1",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
        "redis+cluster://node1:7000",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_every_documented_redis_scheme_is_accepted(url: str) -> None:
    assert load_config(environ={"SIDECAR_REDIS__URL": url}).redis.url == url


def test_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "redis:\n  url: redis://x\n  timeout: [150ms\n")
    problem = only_problem(path)
    assert problem.startswith(f"{path}: invalid YAML at line ")


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "redis: {timeout: 1s}\nredis: {timeout: 2s}\n")
    problem = only_problem(path)
    assert path in problem
    assert "duplicate key 'redis'" in problem


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert only_problem(path) == f"{path}: the top level must be a mapping of sections, not a list"


@pytest.mark.parametrize("use_env", [False, True])
def test_missing_file_is_an_error_naming_it(tmp_path: Path, use_env: bool) -> None:
    missing = str(tmp_path / "nope.yaml")
    problem = only_problem(environ={"SIDECAR_CONFIG": missing}) if use_env else only_problem(missing)
    assert problem.startswith(f"{missing}: cannot read the config file")


def test_directory_instead_of_file_is_an_error(tmp_path: Path) -> None:
    assert only_problem(str(tmp_path)).startswith(f"{tmp_path}: cannot read the config file")


# --- redacted -----------------------------------------------------------------------------------------------


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


# --- issue #3 additions: encryption keys, per-user cap, replica wait, the API --------------------------------

AES_KEY = base64.urlsafe_b64encode(b"e" * 32).decode()


def test_encryption_keys_need_exactly_32_bytes_and_are_redacted() -> None:
    config = load_config(environ={"SIDECAR_SESSION__ENCRYPTION_KEYS": f"e1:{AES_KEY}"})
    assert [(k.kid, k.secret) for k in config.session.encryption_keys] == [("e1", b"e" * 32)]
    assert redacted(config)["session"]["encryption_keys"] == ["e1:<redacted>"]  # type: ignore[index]
    long_key = base64.urlsafe_b64encode(b"e" * 48).decode()
    problem = only_problem(environ={"SIDECAR_SESSION__ENCRYPTION_KEYS": f"e1:{long_key}"})
    assert "session.encryption_keys[0]" in problem and "exactly 32" in problem


def test_negative_session_cap_and_replica_count_are_errors() -> None:
    found = problems_of(environ={"SIDECAR_SESSION__MAX_PER_USER": "-1", "SIDECAR_REDIS__WAIT_REPLICAS": "-2"})
    assert any(p.startswith("session.max_per_user") for p in found)
    assert any(p.startswith("redis.wait_replicas") for p in found)


def test_api_enabled_needs_a_readable_token_file(tmp_path: Path) -> None:
    assert "api.token_file" in only_problem(environ={"SIDECAR_API__ENABLED": "true"})
    missing = tmp_path / "nope"
    assert "cannot read" in only_problem(
        environ={"SIDECAR_API__ENABLED": "true", "SIDECAR_API__TOKEN_FILE": str(missing)}
    )
    short = tmp_path / "short"
    short.write_text("tiny\n")
    assert "at least" in only_problem(environ={"SIDECAR_API__ENABLED": "true", "SIDECAR_API__TOKEN_FILE": str(short)})


def test_api_token_is_read_from_the_file_and_never_shown(tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("t" * 40 + "\n")
    config = load_config(environ={"SIDECAR_API__ENABLED": "true", "SIDECAR_API__TOKEN_FILE": str(token_file)})
    assert config.api.token == "t" * 40
    assert "t" * 40 not in yaml.safe_dump(redacted(config))
    assert "t" * 40 not in repr(config)


def test_redis_passwords_come_from_files_and_are_redacted(tmp_path: Path) -> None:
    secret = tmp_path / "redis-pass"
    secret.write_text("s3cret-pass\n")
    config = load_config(
        environ={"SIDECAR_REDIS__PASSWORD_FILE": str(secret), "SIDECAR_REDIS__SENTINEL_PASSWORD": "sentinel-pass"}
    )
    assert (config.redis.password, config.redis.sentinel_password) == ("s3cret-pass", "sentinel-pass")
    dumped = yaml.safe_dump(redacted(config))
    assert "s3cret-pass" not in dumped and "sentinel-pass" not in dumped
    assert "s3cret-pass" not in repr(config)


def test_redis_secret_file_problems_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    found = problems_of(
        environ={
            "SIDECAR_REDIS__PASSWORD_FILE": str(empty),
            "SIDECAR_REDIS__SENTINEL_PASSWORD_FILE": str(tmp_path / "missing"),
            "SIDECAR_REDIS__TLS_CERT_FILE": str(empty),
        }
    )
    assert any(p.startswith("redis.password_file") and "empty" in p for p in found)
    assert any(p.startswith("redis.sentinel_password_file") and "cannot read" in p for p in found)
    assert any(p.startswith("redis.tls_key_file") for p in found)


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://[::1]:26379,127.0.0.1:26380/mymaster", "redis+cluster://[::1]:7000,[::1]:7001"],
)
def test_multi_host_urls_with_ipv6_hosts_are_accepted(url: str) -> None:
    assert load_config(environ={"SIDECAR_REDIS__URL": url}).redis.url == url


def test_multi_host_url_without_hosts_is_an_error() -> None:
    assert "has no host" in only_problem(environ={"SIDECAR_REDIS__URL": "redis+cluster:///"})


def test_stale_failure_policy_needs_the_cache_and_a_short_window() -> None:
    no_cache = {"SIDECAR_REDIS__FAILURE_POLICY": "stale", "SIDECAR_CACHE__ENABLED": "false"}
    assert only_problem(environ=no_cache).startswith("redis.failure_policy")
    assert only_problem(environ={"SIDECAR_REDIS__STALE_FOR": "1h"}).startswith("redis.stale_for")
    assert "deny or stale" in only_problem(environ={"SIDECAR_REDIS__FAILURE_POLICY": "allow"})


# --- assertion, log, headers budget -------------------------------------------------------------------------


def _pem(key: object) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())  # type: ignore[attr-defined]


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "es256": ec.generate_private_key(ec.SECP256R1()),
        "eddsa": ed25519.Ed25519PrivateKey.generate(),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }
    paths = {}
    for name, key in files.items():
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(_pem(key))
    paths["garbage"] = tmp_path / "garbage.pem"
    paths["garbage"].write_text("not a key")
    return paths


def test_assertion_keys_load_with_their_algorithm_from_the_key_type(tmp_path: Path, key_files: dict[str, Path]) -> None:
    text = (
        "assertion:\n  enabled: true\n  keys:\n"
        f"  - {{kid: new, private_key_file: {key_files['eddsa']}}}\n"
        f"  - {{kid: old, private_key_file: {key_files['es256']}}}\n"
    )
    config = load_config(write(tmp_path, text), environ={})
    assert [(k.kid, k.algorithm) for k in config.assertion.keys] == [("new", "EdDSA"), ("old", "ES256")]
    assert config.assertion.keys[0].private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    shown = yaml.safe_dump(redacted(config))
    assert "BEGIN PRIVATE KEY" not in shown and str(key_files["eddsa"]) in shown


def test_assertion_keys_can_come_from_the_environment_as_kid_colon_path(key_files: dict[str, Path]) -> None:
    config = load_config(
        environ={"SIDECAR_ASSERTION__ENABLED": "true", "SIDECAR_ASSERTION__KEYS": f"k1:{key_files['es256']}"}
    )
    assert [k.kid for k in config.assertion.keys] == ["k1"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("p384", "must hold an EC P-256 (ES256) or Ed25519 (EdDSA) private key"),
        ("rsa", "must hold an EC P-256 (ES256) or Ed25519 (EdDSA) private key"),
        ("garbage", "is not a usable private key: not a PEM key"),
    ],
)
def test_unusable_assertion_keys_are_named(tmp_path: Path, key_files: dict[str, Path], name: str, message: str) -> None:
    text = f"assertion:\n  enabled: true\n  keys: [{{kid: k1, private_key_file: {key_files[name]}}}]\n"
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith("assertion.keys[0].private_key_file:") and message in problem


def test_a_missing_assertion_key_file_is_named(tmp_path: Path) -> None:
    text = f"assertion:\n  keys: [{{kid: k1, private_key_file: {tmp_path / 'nope.pem'}}}]\n"
    assert "cannot read" in only_problem(write(tmp_path, text))


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("enabled: true", "assertion.keys: at least one key is required"),
        ("ttl: 10m", "assertion.ttl: must be between 1s and 5m"),
        ("claims: [sub, phone]", "assertion.claims[1]: unknown claim 'phone'"),
        ("claims: [email]", "assertion.claims: must include sub"),
        ("issuer: ''", "assertion.issuer: must not be empty"),
        ("header: X-Upper", "assertion.header: invalid header name"),
    ],
)
def test_bad_assertion_settings_are_named(tmp_path: Path, section: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, f"assertion:\n  {section}\n"))
    assert problem.startswith(expected), problem


def test_an_enabled_assertion_header_must_be_stripped_from_client_requests(
    tmp_path: Path, key_files: dict[str, Path]
) -> None:
    keys = f"[{{kid: k1, private_key_file: {key_files['es256']}}}]"
    outside = f"assertion: {{enabled: true, header: x-identity, keys: {keys}}}\n"
    assert "so a client-supplied (replayed) assertion would reach the upstream" in only_problem(
        write(tmp_path, outside)
    )
    clash = f"assertion: {{enabled: true, header: x-user-id, keys: {keys}}}\n"
    assert "same header as headers.user_id" in only_problem(write(tmp_path, clash))


def test_derived_assertion_key_fields_cannot_be_set(tmp_path: Path, key_files: dict[str, Path]) -> None:
    text = f"assertion:\n  keys: [{{kid: k1, private_key_file: {key_files['es256']}, algorithm: none}}]\n"
    assert (
        only_problem(write(tmp_path, text)) == "assertion.keys[0].algorithm: unknown key (read from private_key_file)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("log: {format: xml}", "log.format: must be one of json, text"),
        ("log: {sample_allows: 2}", "log.sample_allows:"),
        ("headers: {max_bytes: 100}", "headers.max_bytes:"),
    ],
)
def test_bad_log_and_budget_settings_are_named(tmp_path: Path, text: str, expected: str) -> None:
    assert only_problem(write(tmp_path, text + "\n")).startswith(expected)


# --- issue #16: secrets past redaction, bounded inputs ------------------------------------------------------

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


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://u:S3cr3t%2FPa55@h:26379/m",
        "redis://u:S3cr3t%2FPa55@h:6379/0",
        "redis://u:p@ss@h:6379/0",  # an unencoded '@' ends where the last one does, for every reader
    ],
)
def test_a_percent_encoded_password_is_accepted_and_redacted(url: str) -> None:
    shown = redacted(load_config(environ={"SIDECAR_REDIS__URL": url}))["redis"]["url"]  # type: ignore[index]
    assert "<redacted>" in shown and "S3cr3t" not in shown and "ss@" not in shown


def test_a_url_whose_password_holds_a_slash_is_refused_with_advice(tmp_path: Path) -> None:
    problem = only_problem(environ={"SIDECAR_REDIS__URL": "redis+sentinel://u:S3cr3t/Pa55@h:26379/m"})
    assert problem.startswith("redis.url: a user name or password holds an unencoded '/', '?' or '#'")
    assert "%2F" in problem and "S3cr3t" not in problem


def test_a_path_that_reads_as_a_path_is_still_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "redis-pass")
    problem = only_problem(environ={"SIDECAR_REDIS__PASSWORD_FILE": missing})
    assert problem.startswith(f"redis.password_file: cannot read {missing!r}: No such file or directory")


def fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "directory"])
@pytest.mark.parametrize(
    "key",
    [
        "SIDECAR_CONFIG",
        "SIDECAR_REDIS__PASSWORD_FILE",
        "SIDECAR_REDIS__SENTINEL_PASSWORD_FILE",
        "SIDECAR_API__TOKEN_FILE",
        "SIDECAR_ASSERTION__KEYS",
        "SIDECAR_REDIS__TLS_CA_FILE",
    ],
)
def test_a_file_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path: Path, key: str, special: str) -> None:
    path = {"/dev/zero": "/dev/zero", "fifo": fifo(tmp_path), "directory": str(tmp_path)}[special]
    environ = {key: f"k1:{path}" if key == "SIDECAR_ASSERTION__KEYS" else path}
    environ |= {"SIDECAR_API__ENABLED": "true", "SIDECAR_ASSERTION__ENABLED": "true"}
    if key != "SIDECAR_API__TOKEN_FILE":
        token = tmp_path / "token"
        token.write_text("t" * 40)
        environ["SIDECAR_API__TOKEN_FILE"] = str(token)
    if key != "SIDECAR_ASSERTION__KEYS":
        environ["SIDECAR_ASSERTION__ENABLED"] = "false"
    problem = only_problem(environ=environ)  # a FIFO with no writer would block here; /dev/zero never end
    reason = "it is a directory" if special == "directory" else "it is not a regular file"
    assert "cannot read" in problem and reason in problem, problem


@pytest.mark.parametrize(
    ("key", "limit"),
    [("SIDECAR_CONFIG", MAX_CONFIG_BYTES), ("SIDECAR_REDIS__PASSWORD_FILE", MAX_SECRET_FILE_BYTES)],
)
def test_a_file_larger_than_its_bound_is_refused(tmp_path: Path, key: str, limit: int) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"#" * (limit + 1))
    problem = only_problem(environ={key: str(big)})
    assert "cannot read" in problem and "it is larger than" in problem


def test_a_file_at_its_bound_is_read(tmp_path: Path) -> None:
    exact = tmp_path / "sidecar.yaml"
    exact.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10) + b"#" * (MAX_CONFIG_BYTES % 10))
    assert exact.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(str(exact), environ={}) == Config()


def test_more_routes_than_the_bound_are_refused_before_any_is_validated() -> None:
    routes = "[" + ",".join(f"{{prefix: /r{i}}}" for i in range(MAX_ROUTES + 1)) + "]"
    problem = only_problem(environ={"SIDECAR_ROUTES": routes})
    assert problem.startswith(f"routes: at most {MAX_ROUTES:,} routes (got {MAX_ROUTES + 1:,})")


def test_routes_up_to_the_bound_load() -> None:
    routes = "[" + ",".join(f"{{prefix: /r{i}}}" for i in range(MAX_ROUTES)) + "]"
    assert len(load_config(environ={"SIDECAR_ROUTES": routes}).routes) == MAX_ROUTES
