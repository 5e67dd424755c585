"""Worker planning for ``serve --workers N``: one port per worker, admin on worker 0 only, clear refusals."""

from __future__ import annotations

import pytest

from sidecar.config import load_config
from sidecar.errors import BadInput
from sidecar.workers import worker_environments


def test_each_worker_gets_its_own_grpc_and_http_port_and_only_the_first_the_admin() -> None:
    config = load_config(environ={"SIDECAR_LISTEN__HTTP": "127.0.0.1:9291"})
    envs = worker_environments(config, 3)
    assert [e["SIDECAR_LISTEN__GRPC"] for e in envs] == ["127.0.0.1:9191", "127.0.0.1:9192", "127.0.0.1:9193"]
    assert [e["SIDECAR_LISTEN__HTTP"] for e in envs] == ["127.0.0.1:9291", "127.0.0.1:9292", "127.0.0.1:9293"]
    assert [e["SIDECAR_LISTEN__ADMIN"] for e in envs] == ["127.0.0.1:9090", "", ""]


def test_a_disabled_http_listener_stays_disabled_for_every_worker() -> None:
    config = load_config(environ={"SIDECAR_LISTEN__HTTP": "", "SIDECAR_LISTEN__GRPC": "[::1]:7000"})
    envs = worker_environments(config, 2)
    assert [e["SIDECAR_LISTEN__HTTP"] for e in envs] == ["", ""]
    assert [e["SIDECAR_LISTEN__GRPC"] for e in envs] == ["[::1]:7000", "[::1]:7001"]


@pytest.mark.parametrize(
    ("environ", "workers", "needle"),
    [
        ({}, 0, "between 1 and"),
        ({}, 65, "between 1 and"),
        ({"SIDECAR_LISTEN__GRPC": "127.0.0.1:65535"}, 2, "out of range"),
        ({"SIDECAR_LISTEN__GRPC": "127.0.0.1:0"}, 2, "fixed port"),
        ({}, 2, "collide"),  # the defaults (9191 gRPC, 9192 HTTP) overlap as soon as there are two workers
        ({"SIDECAR_LISTEN__HTTP": "", "SIDECAR_LISTEN__API": "127.0.0.1:9192"}, 2, "listen.grpc uses 9191-9192"),
        ({"SIDECAR_LISTEN__HTTP": "127.0.0.1:9300", "SIDECAR_LISTEN__API": "127.0.0.1:9302"}, 3, "listen.api"),
        ({"SIDECAR_LISTEN__HTTP": "", "SIDECAR_LISTEN__ADMIN": "127.0.0.1:9193"}, 3, "listen.admin"),
        ({"SIDECAR_LISTEN__HTTP": "", "SIDECAR_LISTEN__API": "127.0.0.1:0"}, 2, "listen.api needs a fixed port"),
        ({"SIDECAR_LISTEN__GRPC": "unix:/run/sidecar/grpc.sock"}, 2, "listen.grpc is a unix socket"),
    ],
)
def test_impossible_worker_plans_are_bad_input(environ: dict[str, str], workers: int, needle: str) -> None:
    with pytest.raises(BadInput, match="--workers") as raised:
        worker_environments(load_config(environ=environ), workers)
    assert needle in str(raised.value)


def test_a_separate_api_listener_gets_a_port_per_worker_like_grpc() -> None:
    config = load_config(environ={"SIDECAR_LISTEN__HTTP": "127.0.0.1:9291", "SIDECAR_LISTEN__API": "127.0.0.1:9391"})
    envs = worker_environments(config, 2)
    assert [e["SIDECAR_LISTEN__API"] for e in envs] == ["127.0.0.1:9391", "127.0.0.1:9392"]
    assert [e["SIDECAR_LISTEN__GRPC"] for e in envs] == ["127.0.0.1:9191", "127.0.0.1:9192"]


def test_an_unset_api_listener_stays_unset_so_every_worker_shares_its_grpc_port_for_the_api() -> None:
    envs = worker_environments(load_config(environ={"SIDECAR_LISTEN__HTTP": ""}), 2)
    assert [e["SIDECAR_LISTEN__API"] for e in envs] == ["", ""]


def test_one_worker_keeps_every_address_as_configured_even_an_ephemeral_one() -> None:
    config = load_config(environ={"SIDECAR_LISTEN__GRPC": "127.0.0.1:0", "SIDECAR_LISTEN__API": "127.0.0.1:0"})
    (env,) = worker_environments(config, 1)
    assert env["SIDECAR_LISTEN__GRPC"] == env["SIDECAR_LISTEN__API"] == "127.0.0.1:0"


def test_a_unix_socket_admin_listener_is_worker_zeros_alone() -> None:
    environ = {"SIDECAR_LISTEN__HTTP": "", "SIDECAR_LISTEN__ADMIN": "unix:/run/sidecar/admin.sock"}
    plans = worker_environments(load_config(environ=environ), 2)
    assert [plan["SIDECAR_LISTEN__ADMIN"] for plan in plans] == ["unix:/run/sidecar/admin.sock", ""]
