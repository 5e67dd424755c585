"""listen and forward_auth."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import load_config, redacted
from tests.unit.config.support import only_problem, problems_of, write


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


def test_every_listener_may_be_a_unix_socket() -> None:
    environ = {
        f"SIDECAR_LISTEN__{key.upper()}": f"unix:/run/sidecar/{key}.sock" for key in ("grpc", "http", "admin", "api")
    }
    listen = load_config(environ=environ).listen
    assert (listen.grpc, listen.http, listen.admin, listen.api) == tuple(
        f"unix:/run/sidecar/{key}.sock" for key in ("grpc", "http", "admin", "api")
    )


def test_ephemeral_api_port_may_repeat_another_listeners() -> None:
    config = load_config(environ={"SIDECAR_LISTEN__GRPC": "127.0.0.1:0", "SIDECAR_LISTEN__API": "127.0.0.1:0"})
    assert config.listen.api == "127.0.0.1:0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
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
        ("listen: {grpc: 'unix:run/grpc.sock'}", "listen.grpc: invalid address 'unix:run/grpc.sock': a unix socket is"),
        ("listen: {http: 'unix:/run/'}", "listen.http: invalid address 'unix:/run/': a unix socket is"),
        (f"listen: {{admin: 'unix:/{'a' * 107}'}}", "listen.admin: invalid address"),
        ("listen: {http: 'unix:/run/s.sock', admin: 'unix:/run/s.sock'}", "listen.admin: same address as listen.http"),
        ("listen: {idle_timeout: 500ms}", "listen.idle_timeout: must be between 1s and 1h (got 500ms)"),
        ("listen: {idle_timeout: 2h}", "listen.idle_timeout: must be between 1s and 1h (got 2h)"),
        ("listen: {idle_timeout: soon}", "listen.idle_timeout: invalid duration 'soon'"),
        ("listen: {max_connections: 0}", "listen.max_connections: must be at least 1"),
        ("listen: {max_connections: 100001}", "listen.max_connections: must be at most 100000"),
        ("listen: {max_connections: many}", "listen.max_connections: must be an integer"),
        ("listen: {grpc_threads: -1}", "listen.grpc_threads: must be at least 0"),
        ("listen: {grpc_threads: 65}", "listen.grpc_threads: must be at most 64"),
        ("forward_auth: {trusted_hops: -1}", "forward_auth.trusted_hops: must be at least 0"),
        ("forward_auth: {trusted_hops: 11}", "forward_auth.trusted_hops: must be at most 10"),
        (
            "forward_auth: {proxy: caddy}",
            "forward_auth.proxy: must be one of any, envoy, nginx, traefik, ingress-nginx (got 'caddy')",
        ),
        ("forward_auth: {proxi: nginx}", "forward_auth.proxi: unknown key"),
    ],
)
def test_invalid_values_are_reported_with_their_key_path(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(write(tmp_path, text))
    assert problem.startswith(expected), problem
    assert "pydantic" not in problem
