"""redis and cache: the URL forms, passwords and TLS files, the failure policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config import RedisConfig, load_config, redacted
from tests.unit.config.support import only_problem, problems_of, write


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis: {url: 'http://x:1'}", "redis.url: unsupported URL 'http://x:1'"),
        ("redis: {url: 'redis://:6379'}", "redis.url: 'redis://:6379' has no host"),
        ("redis: {url: 'redis://h:port/0'}", "redis.url: 'redis://h:port/0' has an invalid port"),
        ("redis: {url: 'unix://'}", "redis.url: a unix:// URL needs a socket path"),
        ("redis: {key_prefix: 'a b'}", "redis.key_prefix: must not contain whitespace"),
        ("redis: {timeout: -1s}", "redis.timeout: invalid duration '-1s': must be greater than 0"),
    ],
)
def test_invalid_values_are_reported_with_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith(expected), problem
    assert "pydantic" not in problem


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


def test_a_secret_file_problem_and_the_sections_other_problems_are_reported_together(tmp_path: Path) -> None:
    found = problems_of(
        environ={
            "SIDECAR_REDIS__PASSWORD_FILE": str(tmp_path / "missing"),
            "SIDECAR_REDIS__KEY_PREFIX": "a b",
            "SIDECAR_REDIS__FAILURE_POLICY": "allow",
        }
    )
    assert [p.split(":")[0] for p in found] == ["redis.key_prefix", "redis.password_file", "redis.failure_policy"]


def test_a_model_built_directly_holds_what_its_password_file_says(tmp_path: Path) -> None:
    secret = tmp_path / "redis-pass"
    secret.write_text("s3cret-pass\n")
    assert RedisConfig(password_file=str(secret)).password == "s3cret-pass"
    assert RedisConfig.model_validate({"password_file": str(secret)}).password == "s3cret-pass"
