"""sources: the ordered session sources, each kind with its framework's defaults and only its own keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config import load_config, redacted
from sidecar.sources.paths import Paths
from tests.unit.config.support import only_problem, problems_of, write


def secrets_file(tmp_path: Path, text: str = "first-app-secret\n\n  second-app-secret  \n") -> str:
    path = tmp_path / "secrets"
    path.write_text(text)
    return str(path)


def test_the_default_is_the_native_source_alone() -> None:
    assert [source.kind for source in load_config(environ={}).sources] == ["native"]


def test_each_kind_takes_its_frameworks_defaults(tmp_path: Path) -> None:
    secrets = secrets_file(tmp_path)
    config = load_config(
        write(
            tmp_path,
            f"""
sources:
  - kind: spring-session
  - kind: express
    secrets_file: {secrets}
  - kind: django
  - kind: flask
  - kind: php
  - kind: rails
""",
        ),
        environ={},
    )
    got = {s.kind: s.settings() for s in config.sources}
    assert (got["spring-session"].cookie, got["spring-session"].key_prefix) == ("SESSION", "spring:session:")
    assert got["spring-session"].serializer == "jdk"
    assert (got["express"].cookie, got["express"].key_prefix) == ("connect.sid", "sess:")
    assert got["express"].secrets == (b"first-app-secret", b"second-app-secret")
    assert got["express"].paths == Paths("passport.user")
    assert got["django"].cookie == "sessionid" and got["django"].paths.user_id == "_auth_user_id"
    assert (got["flask"].cookie, got["flask"].key_prefix, got["flask"].serializer) == ("session", "session:", "msgpack")
    assert (got["php"].cookie, got["php"].key_prefix) == ("PHPSESSID", "PHPREDIS_SESSION:")
    assert got["rails"].serializer == "json"


def test_keys_set_in_an_entry_win_over_the_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
sources:
  - kind: php
    cookie: APPSESSION
    key_prefix: "app:php:"
    serializer: php_serialize
    user_id: auth.id
    email: auth.email
    roles: auth.roles
    redis: {url: "redis://127.0.0.1:6390/2", timeout: 250ms}
""",
        ),
        environ={},
    )
    (php,) = config.sources
    settings = php.settings()
    assert (settings.cookie, settings.key_prefix, settings.serializer) == ("APPSESSION", "app:php:", "php_serialize")
    assert settings.paths == Paths("auth.id", "auth.email", "auth.roles")
    assert php.redis is not None and php.redis.timeout == 0.25


@pytest.mark.parametrize(
    ("entry", "where", "message"),
    [
        ("{kind: memcached}", "sources[0].kind", "must be one of native, spring-session"),
        ("{kind: express}", "sources[0].secrets_file", "is required for kind express"),
        ("{kind: native, cookie: SID}", "sources[0].cookie", "not a key of kind native"),
        ("{kind: django, secrets_file: /etc/hostname}", "sources[0].secrets_file", "not a key of kind django"),
        ("{kind: php, serializer: jdk}", "sources[0].serializer", "must be php | php_serialize"),
        ("{kind: django, serializer: json}", "sources[0].serializer", "it has one format"),
        ("{kind: flask, user_id: 'a..b'}", "sources[0].user_id", "empty part"),
        ("{kind: flask, cookie: 'a b'}", "sources[0].cookie", "RFC 6265"),
        ("{kind: flask, key_prefix: ''}", "sources[0].key_prefix", "1 to 256"),
        ("{kind: flask, colour: red}", "sources[0].colour", ""),
        ("{kind: flask, secrets: [abc]}", "sources[0].secrets", "read from secrets_file"),
        ("{kind: flask, redis: {url: 'http://x'}}", "sources[0].redis.url", "unsupported URL"),
    ],
)
def test_a_wrong_entry_is_named_at_its_key(tmp_path: Path, entry: str, where: str, message: str) -> None:
    problem = only_problem(write(tmp_path, f"sources:\n  - {entry}\n"))
    assert problem.startswith(where) and message in problem, problem


def test_the_list_has_one_native_at_most_and_is_never_empty(tmp_path: Path) -> None:
    assert "native is listed twice" in only_problem(write(tmp_path, "sources: [{kind: native}, {kind: native}]\n"))
    assert "at least one source" in only_problem(write(tmp_path, "sources: []\n"))
    assert "at most 8 sources" in only_problem(write(tmp_path, "sources: " + str([{"kind": "php"}] * 9) + "\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no secret"),
        ("short\n", "shorter than 8 bytes"),
        ("\n".join(f"s{i:08}" for i in range(17)), "more than 16"),
    ],
)
def test_a_secrets_file_that_cannot_be_used_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = secrets_file(tmp_path, text)
    problems = problems_of(write(tmp_path, f"sources: [{{kind: express, secrets_file: {path}}}]\n"))
    assert any(p.startswith("sources[0].secrets_file") and message in p for p in problems), problems


def test_secrets_and_passwords_are_never_shown(tmp_path: Path) -> None:
    secrets = secrets_file(tmp_path)
    config = load_config(
        write(
            tmp_path,
            f"sources: [{{kind: express, secrets_file: {secrets}, redis: {{url: 'redis://:hunter22@127.0.0.1:1/0'}}}}]\n",
        ),
        environ={},
    )
    shown = yaml.safe_dump(redacted(config)) + repr(config)
    assert "first-app-secret" not in shown and "hunter22" not in shown
    assert "connect.sid" in shown  # the defaults are shown filled in
