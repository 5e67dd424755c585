"""The session-sidecar command line, run as a user runs it: a real process, real Valkey, exit codes and output."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def run(*args: str, env: dict[str, str] | None = None, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **(env or {})}
    argv = [sys.executable, "-m", "sidecar", *args]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=60, check=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def config(tmp_path: Path, valkey_url: str) -> Path:
    path = tmp_path / "sidecar.yaml"
    prefix = f"cli-{tmp_path.name[-12:]}:"
    path.write_text(f"redis:\n  url: {valkey_url}\n  key_prefix: '{prefix}'\n")
    return path


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr


def test_create_prints_token_cookie_handle_and_expiry(config: Path) -> None:
    result = run("session", "create", "--user", "alice", "--email", "a@example.com", "--roles", "admin,dev",
                 "--attr", "team=blue", config=config)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert not out["token"].startswith("-")
    assert out["set_cookie"].startswith(f"SESSION={out['token']};")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"):
        assert attribute in out["set_cookie"]
    assert out["session_id"] and out["session_id"] not in out["token"]
    expires = datetime.fromisoformat(out["expires_at"].replace("Z", "+00:00"))
    minutes_left = (expires - datetime.now(UTC)).total_seconds() / 60
    assert 29 <= minutes_left <= 30.1  # the earlier of idle (30m) and absolute (12h)
    assert out["roles"] == ["admin", "dev"]
    assert out["attributes"] == {"team": "blue"}


def test_list_shows_live_sessions_without_tokens(config: Path) -> None:
    created = [json.loads(run("session", "create", "--user", "lister", config=config).stdout) for _ in range(2)]
    result = run("session", "list", "lister", config=config)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert sorted(s["session_id"] for s in listed) == sorted(c["session_id"] for c in created)
    for entry in listed:
        assert {"session_id", "created_at", "last_seen_at", "expires_at"} <= entry.keys()
        assert all(c["token"] not in result.stdout for c in created)


def test_revoke_exits_zero_whether_or_not_the_session_existed(config: Path) -> None:
    token = json.loads(run("session", "create", "--user", "rev", config=config).stdout)["token"]
    first = run("session", "revoke", token, config=config)
    second = run("session", "revoke", token, config=config)
    assert (first.returncode, json.loads(first.stdout)) == (0, {"revoked": 1})
    assert (second.returncode, json.loads(second.stdout)) == (0, {"revoked": 0})
    assert json.loads(run("session", "list", "rev", config=config).stdout) == []


def test_revoke_user_prints_the_count(config: Path) -> None:
    for _ in range(3):
        run("session", "create", "--user", "many", config=config)
    result = run("session", "revoke-user", "many", config=config)
    assert (result.returncode, json.loads(result.stdout)) == (0, {"revoked": 3})


def test_malformed_token_is_bad_input(config: Path) -> None:
    assert_clean_error(run("session", "revoke", "not-a-token", config=config), 2, "token")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--user", "bob", "--idle-timeout", "soon"], "--idle-timeout"),
        (["--user", "bob", "--absolute-timeout", "-5s"], "--absolute-timeout"),
        (["--user", "bob", "--attr", "novalue"], "--attr"),
        (["--user", "bob", "--roles", "a,,b"], "--roles"),
        (["--user", "bob\r\nx-injected: 1"], "user id"),
        (["--user", ""], "user id"),
    ],
    ids=["bad-idle", "negative-absolute", "attr-without-equals", "empty-role", "crlf-user", "empty-user"],
)
def test_bad_create_arguments_exit_2_naming_the_argument(config: Path, args: list[str], needle: str) -> None:
    assert_clean_error(run("session", "create", *args, config=config), 2, needle)


def test_unknown_subcommand_exits_2() -> None:
    assert_clean_error(run("session", "frobnicate"), 2, "invalid choice")


def test_unreachable_store_is_a_runtime_failure_with_one_clear_line(tmp_path: Path) -> None:
    result = run("session", "list", "bob", env={"SIDECAR_REDIS__URL": f"redis://127.0.0.1:{closed_port()}/0"})
    assert_clean_error(result, 1, "unreachable")
    assert len(result.stderr.strip().splitlines()) == 1


def test_config_errors_are_all_reported_with_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("redis:\n  timeout: fast\ncookie:\n  nmae: x\nsession:\n  idle_timeout: -1\n")
    result = run("config", "check", config=path)
    assert_clean_error(result, 2, "redis.timeout", "cookie.nmae", "session.idle_timeout")


def test_config_comes_from_sidecar_config_too(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cookie:\n  name: __Host-session\n")
    result = run("config", "check", env={"SIDECAR_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert "__Host-session" in result.stdout


def test_config_check_redacts_secrets(tmp_path: Path) -> None:
    secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"
    env = {"SIDECAR_REDIS__URL": "redis://app:hunter2@127.0.0.1:6379/0", "SIDECAR_TOKEN__KEYS": f"k1:{secret}"}
    result = run("config", "check", env=env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout and secret not in result.stdout
    assert "<redacted>" in result.stdout and "timeout: 150ms" in result.stdout


def test_serve_on_a_busy_port_exits_1_naming_the_listener(tmp_path: Path, valkey_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {"SIDECAR_REDIS__URL": valkey_url, "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{port}"}
        result = run("serve", env=env)
    assert_clean_error(result, 1, "listen.grpc")


# --------------------------------------------------------------------------------------------------- assertion keygen


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
def test_keygen_writes_a_0600_key_that_config_check_accepts(tmp_path: Path, algorithm: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: PLC0415

    key = tmp_path / "assertion.pem"
    result = run("assertion", "keygen", "--algorithm", algorithm, "--out", str(key))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"algorithm": algorithm, "private_key_file": str(key)}
    assert key.stat().st_mode & 0o777 == 0o600
    pem = key.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    loaded = load_pem_private_key(pem, password=None)
    if algorithm == "ES256":
        assert isinstance(loaded, ec.EllipticCurvePrivateKey) and isinstance(loaded.curve, ec.SECP256R1)
    else:
        assert isinstance(loaded, ed25519.Ed25519PrivateKey)

    config = tmp_path / "sidecar.yaml"
    config.write_text(f"assertion:\n  enabled: true\n  keys:\n    - kid: k1\n      private_key_file: {key}\n")
    checked = run("config", "check", config=config)
    assert checked.returncode == 0, checked.stderr
    assert "kid: k1" in checked.stdout
    assert "PRIVATE KEY" not in checked.stdout and pem.decode().splitlines()[1] not in checked.stdout


def test_keygen_key_works_through_the_environment_short_form(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    assert run("assertion", "keygen", "--algorithm", "EdDSA", "--out", str(key)).returncode == 0
    env = {"SIDECAR_ASSERTION__ENABLED": "true", "SIDECAR_ASSERTION__KEYS": f"k2:{key}"}
    result = run("config", "check", env=env)
    assert result.returncode == 0, result.stderr
    assert "kid: k2" in result.stdout


def test_keygen_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    key = tmp_path / "assertion.pem"
    key.write_text("the key in production\n")
    result = run("assertion", "keygen", "--algorithm", "ES256", "--out", str(key))
    assert_clean_error(result, 2, "--out", "already exists")
    assert len(result.stderr.strip().splitlines()) == 1
    assert key.read_text() == "the key in production\n"


def test_keygen_does_not_follow_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.pem"
    link = tmp_path / "assertion.pem"
    link.symlink_to(target)
    assert_clean_error(run("assertion", "keygen", "--algorithm", "ES256", "--out", str(link)), 2, "--out")
    assert not target.exists()


@pytest.mark.parametrize("algorithm", ["RS256", "es256", "HS256", ""])
def test_keygen_with_an_unknown_algorithm_exits_2(tmp_path: Path, algorithm: str) -> None:
    key = tmp_path / "k.pem"
    assert_clean_error(run("assertion", "keygen", "--algorithm", algorithm, "--out", str(key)), 2, "--algorithm")
    assert not key.exists()


def test_keygen_without_out_exits_2(tmp_path: Path) -> None:
    assert_clean_error(run("assertion", "keygen", "--algorithm", "ES256"), 2, "--out")


def test_keygen_into_a_missing_directory_exits_2_naming_out(tmp_path: Path) -> None:
    result = run("assertion", "keygen", "--algorithm", "EdDSA", "--out", str(tmp_path / "no" / "k.pem"))
    assert_clean_error(result, 2, "--out", "No such file or directory")


def test_keygen_to_stdout_prints_only_the_pem() -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    from cryptography.hazmat.primitives.serialization import load_pem_private_key  # noqa: PLC0415

    result = run("assertion", "keygen", "--algorithm", "EdDSA", "--out", "-")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert result.stdout.endswith("-----END PRIVATE KEY-----\n")
    assert isinstance(load_pem_private_key(result.stdout.encode(), password=None), ed25519.Ed25519PrivateKey)
