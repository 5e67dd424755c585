"""The session-sidecar command line, run as a user runs it: a real process, real Valkey, exit codes and output."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from tests.support import processes
from tests.support.processes import free_port, wait_for_port
from tests.unit.config.test_redaction import LEAK, leaky_configs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


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


BIG = "x" * 100_000  # under Linux's 128 KiB bound on one argument


@pytest.mark.parametrize(
    "args",
    [
        ["--roles", f"admin,,{BIG}"],
        ["--attr", BIG],
        ["--attr", f"{BIG}=1", "--attr", f"{BIG}=2"],
    ],
    ids=["empty-role-in-a-long-list", "attr-without-equals", "long-attr-given-twice"],
)
def test_a_100_kb_argument_gives_one_short_error_line(args: list[str]) -> None:
    # Refused before the store is asked, so no server is needed (and none is reachable).
    result = run(
        "session", "create", "--user", "bob", *args, env={"SIDECAR_REDIS__URL": f"redis://127.0.0.1:{closed_port()}/0"}
    )
    assert_clean_error(result, 2, args[0])
    assert len(result.stderr.splitlines()) == 1 and len(result.stderr) < 300, result.stderr[:300]


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


# ------------------------------------------------------------------------------------------- issue #16: secrets


def limited(memory_bytes: int = 2 << 30) -> None:
    """preexec_fn: cap the child's address space, so a runaway read ends in a MemoryError, not a swapped machine."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def run_limited(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, check=False, preexec_fn=limited,
    )  # fmt: skip


@pytest.mark.parametrize(("what", "environ"), leaky_configs(Path("/nonexistent")), ids=lambda v: str(v)[:40])
def test_config_check_and_serve_never_print_a_malformed_secret(what: str, environ: dict[str, str]) -> None:
    for command in (("config", "check"), ("serve",)):
        result = run(*command, env=environ)
        assert_clean_error(result, 2)
        for output in (result.stdout, result.stderr):
            assert LEAK not in output and LEAK[:16] not in output, (what, command, output)


def start_serve(port: int, redis_url: str, **extra: str) -> subprocess.Popen[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "SIDECAR_REDIS__URL": redis_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{port}",
        "SIDECAR_LISTEN__HTTP": "",
        "SIDECAR_LISTEN__ADMIN": "",
        **extra,
    }
    argv = [sys.executable, "-m", "sidecar", "serve"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_serve_logs_never_show_a_url_password(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://app:{LEAK}%2Fx@127.0.0.1:{closed_port()}/0"
    proc = start_serve(port, url, SIDECAR_LOG__LEVEL="debug")
    try:
        wait_for_port("127.0.0.1", port, 20.0, proc=proc)
        checked = run("config", "check", env={"SIDECAR_REDIS__URL": url})
        assert checked.returncode == 0 and "app:<redacted>@127.0.0.1" in checked.stdout
        assert LEAK not in checked.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert "redis://app:<redacted>@" in err  # the store's failures were logged, with the URL redacted
    assert LEAK not in out and LEAK not in err


# ------------------------------------------------------------------------------------ issue #16: bounded inputs


@pytest.mark.parametrize(
    "key",
    ["SIDECAR_CONFIG", "SIDECAR_REDIS__PASSWORD_FILE", "SIDECAR_API__TOKEN_FILE", "SIDECAR_ASSERTION__KEYS"],
)
def test_a_file_at_dev_zero_is_one_clear_line(key: str) -> None:
    env = {key: "k1:/dev/zero" if key == "SIDECAR_ASSERTION__KEYS" else "/dev/zero"}
    env |= {"SIDECAR_API__ENABLED": "true"} if key == "SIDECAR_API__TOKEN_FILE" else {}
    env |= {"SIDECAR_ASSERTION__ENABLED": "true"} if key == "SIDECAR_ASSERTION__KEYS" else {}
    result = run_limited("config", "check", env=env)
    assert_clean_error(result, 2, "/dev/zero", "it is not a regular file")
    assert len(result.stderr.splitlines()) == 1


def test_a_fifo_as_the_config_path_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    result = run_limited("config", "check", "--config", str(fifo), env={}, timeout=30)  # it used to block forever
    assert_clean_error(result, 2, str(fifo), "it is not a regular file")
    assert len(result.stderr.splitlines()) == 1


def routes_yaml(count: int) -> str:
    return "routes:\n" + "".join(f"  - {{prefix: /r{i}, roles: [a, b]}}\n" for i in range(count))


def test_an_8_mb_config_of_200k_routes_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(routes_yaml(200_000))
    assert path.stat().st_size > 7_000_000
    started = time.monotonic()
    result = run_limited("config", "check", "--config", str(path), env={}, timeout=30)  # it took 53 s and 1.1 GB
    assert_clean_error(result, 2, "it is larger than 1 MiB")
    assert len(result.stderr.splitlines()) == 1
    assert time.monotonic() - started < 30


def test_a_config_within_the_size_bound_with_too_many_routes_is_refused_in_bounded_time(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    text = routes_yaml(40_000)
    path.write_text(text[: 1024 * 1024].rsplit("\n", 1)[0] + "\n")
    result = run_limited("config", "check", "--config", str(path), env={}, timeout=30)  # measured: 5 s on a busy box
    assert_clean_error(result, 2, "routes: at most 10,000 routes")
    assert len(result.stderr.splitlines()) == 1


def test_an_unreachable_redis_cluster_is_one_line_and_exit_1() -> None:
    result = run("session", "list", "bob", env={"SIDECAR_REDIS__URL": f"redis+cluster://127.0.0.1:{closed_port()}"})
    assert_clean_error(result, 1, "redis+cluster://127.0.0.1", "unreachable")
    assert len(result.stderr.strip().splitlines()) == 1


# -------------------------------------------------------------------- issue #11 part 2: mesh snippets in config check


def test_config_check_prints_envoy_and_istio_header_lists_with_the_configured_names(tmp_path: Path) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "headers: {user_id: x-auth-user, email: x-auth-email, roles: x-auth-roles, session: x-auth-session,\n"
        "          strip_prefixes: [x-auth-]}\n"
        "forward_auth: {trusted_hops: 1}\n"
    )
    result = run("config", "check", config=config)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)  # the snippets are comments: the output is still the config alone
    assert effective["headers"]["user_id"] == "x-auth-user"
    for needle in ("exact: x-auth-user", "prefix: x-auth-", "exact: x-forwarded-for", "- x-auth-user", "- x-auth-*",
                   "includeRequestHeadersInCheck", "headersToUpstreamOnAllow", "allowed_upstream_headers"):  # fmt: skip
        assert needle in result.stdout, needle
    snippets = result.stdout[result.stdout.index("# Envoy HTTP ext_authz") :]
    assert "x-user-" not in snippets and "x-session-" not in snippets  # the configured names, not the defaults


def test_the_printed_envoy_snippet_is_a_valid_ext_authz_filter(tmp_path: Path) -> None:
    envoy = processes.envoy_binary()
    result = run("config", "check", env={"SIDECAR_HEADERS__USER_ID": "x-user-ident"})
    assert result.returncode == 0, result.stderr
    envoy_block = result.stdout.split("# Envoy HTTP ext_authz", 1)[1].split("# Istio", 1)[0]
    snippet = yaml.safe_load("\n".join(line[4:] for line in envoy_block.splitlines()[1:] if line.startswith("#   ")))
    bootstrap = yaml.safe_load((ROOT / "mesh-config" / "envoy" / "envoy-http.yaml").read_text())
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    typed = ext_authz["typed_config"]
    ext_authz["typed_config"] = {"@type": typed["@type"], "transport_api_version": "V3", **snippet}
    assert {"exact": "x-user-ident"} in snippet["allowed_headers"]["patterns"]
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    validated = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert validated.returncode == 0, validated.stderr
