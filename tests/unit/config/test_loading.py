"""load_config: CONTRACT.md defaults, the YAML file, SIDECAR_* overrides, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import MAX_CONFIG_BYTES, Config, RouteConfig, SigningKey, load_config
from sidecar.errors import BadInput
from tests.unit.config.support import (
    OTHER,
    OTHER_BYTES,
    PREFIXES3,
    SECRET,
    SECRET_BYTES,
    only_problem,
    problems_of,
    write,
)


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
        ("redis: 5", "redis: must be a mapping"),
        ("cookie: {name: 123}", "cookie.name: must be a string"),
        ("cookie: {strip_upstream: maybe}", "cookie.strip_upstream: must be true or false"),
        ("routes: {prefix: /a}", "routes: must be a list"),
        ("routes: [/a]", "routes[0]: must be a mapping"),
        ("routes: [{public: true}]", "routes[0].prefix: is required"),
    ],
)
def test_invalid_values_are_reported_with_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith(expected), problem
    assert "pydantic" not in problem


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


def test_a_file_at_its_bound_is_read(tmp_path: Path) -> None:
    exact = tmp_path / "sidecar.yaml"
    exact.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10) + b"#" * (MAX_CONFIG_BYTES % 10))
    assert exact.stat().st_size == MAX_CONFIG_BYTES
    assert load_config(str(exact), environ={}) == Config()
