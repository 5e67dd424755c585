"""The served process's listeners under abuse (issue #11 part 3, #16): one connection cannot starve the others of
the event loop, memory or file descriptors. The real sidecar runs as a subprocess (uvloop, gRPC and HTTP on one
loop) against a real Valkey; every client is on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import free_port, wait_for_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]  # run the sidecar of this checkout


class Sidecar:
    def __init__(self, proc: subprocess.Popen[bytes], grpc_port: int, http_port: int, admin_port: int) -> None:
        self.proc, self.grpc_port, self.http_port, self.admin_port = proc, grpc_port, http_port, admin_port

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


@contextlib.contextmanager
def sidecar(
    redis_url: str, tmp_path: Path, *, open_files: int | None = None, env: dict[str, str] | None = None
) -> Iterator[Sidecar]:
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    environment = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "SIDECAR_REDIS__URL": redis_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{grpc_port}",
        "SIDECAR_LISTEN__HTTP": f"127.0.0.1:{http_port}",
        "SIDECAR_LISTEN__ADMIN": f"127.0.0.1:{admin_port}",
        **(env or {}),
    }

    def limit_open_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    log = (tmp_path / "sidecar.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"],
        env=environment,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log,
        preexec_fn=limit_open_files,  # noqa: PLW1509 (a single-threaded test process starts it)
    )
    try:
        for port in (grpc_port, http_port, admin_port):
            wait_for_port("127.0.0.1", port, 20.0, proc=proc, name="sidecar")
        yield Sidecar(proc, grpc_port, http_port, admin_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def http_request(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "host: app.example.com", *headers]) + "\r\n\r\n").encode()


def timed_http_answer(port: int, timeout: float = 5.0) -> float:
    """Seconds from sending one request on a connection opened beforehand to its answer's first bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(http_request("/probe"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 401 ")
        return time.monotonic() - started


def check_request() -> external_auth_pb2.CheckRequest:
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method, http.scheme, http.host, http.path = "GET", "http", "app", "/x"
    return check


def test_a_pipelined_flood_leaves_http_and_grpc_checks_answered_within_200_ms(valkey_url: str, tmp_path: Path) -> None:
    flood = http_request("/flood") * 5000
    with sidecar(valkey_url, tmp_path) as served, grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
        assert check(check_request(), timeout=5).status.code == 16  # connected and warm: UNAUTHENTICATED
        timed_http_answer(served.http_port)
        for _ in range(3):  # a flood of 5,000 held the loop ~0.6 s: every probe of a round falls inside one
            with socket.create_connection(("127.0.0.1", served.http_port), timeout=20) as flooder:
                answered: list[int] = []

                def drain(sock: socket.socket = flooder, answers: list[int] = answered) -> None:
                    received, seen = b"", 0
                    while seen < 5000:
                        chunk = sock.recv(1 << 20)
                        if not chunk:
                            break
                        received = received[-3:] + chunk
                        seen += received.count(b"\r\n\r\n")
                    answers.append(seen)

                reader = threading.Thread(target=drain)
                reader.start()
                flooder.sendall(flood)
                started = time.monotonic()
                assert check(check_request(), timeout=5).status.code == 16
                grpc_latency = time.monotonic() - started
                http_latency = timed_http_answer(served.http_port)
                reader.join(20)
            assert answered == [5000]
            assert grpc_latency < 0.2, f"a gRPC Check waited {grpc_latency * 1000:.0f} ms during the flood"
            assert http_latency < 0.2, f"an HTTP check waited {http_latency * 1000:.0f} ms during the flood"


def test_a_client_that_pipelines_big_answers_and_never_reads_grows_the_sidecar_less_than_32_mib(
    valkey_url: str, tmp_path: Path
) -> None:
    # A browser navigation to a 60 KB path is answered with a 302 carrying it percent-encoded (180 KB here): 300 of
    # them are 54 MB of answers.
    navigation = http_request("/" + "!" * 60_000, "accept: text/html")
    env = {"SIDECAR_DENY__LOGIN_URL": "https://login.example.com/start"}
    with sidecar(valkey_url, tmp_path, env=env) as served:
        timed_http_answer(served.http_port)
        before = served.rss_kib()
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers stay in the sidecar, not the kernel
            client.connect(("127.0.0.1", served.http_port))
            client.setblocking(False)
            burst, sent, deadline = navigation * 300, 0, time.monotonic() + 5
            while sent < len(burst) and time.monotonic() < deadline:  # as much as the sidecar takes, never reading
                with contextlib.suppress(BlockingIOError):
                    sent += client.send(burst[sent : sent + (1 << 20)])
                    continue
                time.sleep(0.01)
            time.sleep(1.0)
            grown = served.rss_kib() - before
            assert timed_http_answer(served.http_port) < 1.0  # the others are still served
        assert grown < 32 * 1024, f"RSS grew {grown / 1024:.1f} MiB for one client that reads nothing"


def test_a_connection_flood_on_listen_admin_leaves_descriptors_for_http_and_grpc(
    valkey_url: str, tmp_path: Path
) -> None:
    with sidecar(valkey_url, tmp_path, open_files=256) as served, contextlib.ExitStack() as held:
        for _ in range(400):  # more than the process may open
            with contextlib.suppress(OSError):
                held.enter_context(socket.create_connection(("127.0.0.1", served.admin_port), timeout=2))
        time.sleep(0.3)
        assert served.descriptors() < 256
        assert timed_http_answer(served.http_port, timeout=2) < 1.0
        with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
            request = health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization")
            status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
        assert status == health_pb2.HealthCheckResponse.SERVING
