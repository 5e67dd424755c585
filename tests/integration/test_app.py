"""The served process (sidecar.app): health on the gRPC port, fail-closed start without a store, clean SIGTERM."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.client import SessionClient
from sidecar.core.tokens import session_key
from sidecar.errors import RuntimeFailure
from tests.support import servers
from tests.support.processes import free_port, wait_for_port

pytestmark = pytest.mark.integration


def serve(
    redis_url: str, admin_port: int | None = None, extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_REDIS__URL": redis_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{port}",
        "SIDECAR_LISTEN__ADMIN": f"127.0.0.1:{admin_port}" if admin_port else "",
        **(extra or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    wait_for_port("127.0.0.1", port, 15.0)
    if admin_port:
        wait_for_port("127.0.0.1", admin_port, 15.0)
    return proc, port


def admin_status(admin_port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        return int(sock.recv(4096).split(b" ", 2)[1])


def authz_health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization")
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)


def test_readiness_follows_the_store(tmp_path: Path) -> None:
    store = servers.start_valkey_server(tmp_path / "v")
    admin_port = free_port()
    proc, port = serve(store.url, admin_port)
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        assert admin_status(admin_port, "/healthz") == 200
        assert admin_status(admin_port, "/readyz") == 200
        assert authz_health(port) == serving
        store.stop()
        deadline = time.monotonic() + 10
        while admin_status(admin_port, "/readyz") != 503:
            assert time.monotonic() < deadline, "never became unready"
            time.sleep(0.1)
        assert authz_health(port) == not_serving
        assert admin_status(admin_port, "/healthz") == 200  # alive all the same
        store.start()
        deadline = time.monotonic() + 10
        while admin_status(admin_port, "/readyz") != 200:
            assert time.monotonic() < deadline, "never became ready again"
            time.sleep(0.1)
        assert authz_health(port) == serving
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        store.stop()


def check(port: int, cookie: str) -> object:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.scheme, http.host, http.path = "GET", "http", "app", "/x"
    http.header_map.headers.append(base_pb2.HeaderValue(key="cookie", raw_value=cookie.encode()))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)


def test_health_is_serving_and_sigterm_exits_cleanly(valkey_url: str) -> None:
    proc, port = serve(valkey_url)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "envoy.service.auth.v3.Authorization"):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_while_the_start_waits_on_a_silent_store_drains_and_exits_0() -> None:
    # A store that accepts connections and never answers: the key ring warm-up waits its full timeout after the
    # gRPC port opened. A SIGTERM in that window used to kill the process (-15): handlers came only after it.
    silent = socket.create_server(("127.0.0.1", 0))
    silent.listen(64)
    try:
        proc, _ = serve(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        try:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")
        finally:
            proc.kill()
            proc.wait()
    finally:
        silent.close()


def test_starts_without_a_store_and_answers_503_for_sessions(valkey_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    proc, port = serve(dead)
    try:
        token = "s1.shared." + "A" * 43 + "." + "B" * 22
        response = check(port, f"SESSION={token}")
        assert response.denied_response.status.code == 503  # type: ignore[attr-defined]
        assert not response.HasField("ok_response")  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def create_session(redis_url: str, user: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_REDIS__URL": redis_url}
    created = subprocess.run(
        [sys.executable, "-m", "sidecar", "session", "create", "--user", user, "--roles", "dev"],
        env=env, capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    token: str = json.loads(created.stdout)["token"]
    return token


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("uid", "mallory\r\nx-user-roles: admin"),
        ("uid", "mallory\x00"),
        ("email", "m@example.com\nx-user-id: root"),
        ("roles", ["dev\r"]),
        ("uid", "m" * 5000),
    ],
    ids=["crlf-in-user-id", "nul-in-user-id", "lf-in-email", "cr-in-role", "oversized-user-id"],
)
def test_served_sidecar_denies_a_stored_session_whose_identity_is_not_header_safe(
    valkey_url: str, field: str, value: object
) -> None:
    tampered, untouched = create_session(valkey_url, "mallory"), create_session(valkey_url, "mallory")
    key = session_key(tampered)
    name = f"sidecar:{{{key.tag}}}:s:{key.digest}"
    client = redis.Redis.from_url(valkey_url)
    try:
        stored = client.hget(name, "d")
        assert isinstance(stored, bytes) and stored.startswith(b"p1.")  # the default config stores plain JSON
        data = json.loads(stored[3:])
        data[field] = value
        client.hset(name, "d", b"p1." + json.dumps(data).encode())
    finally:
        client.close()
    proc, port = serve(valkey_url)
    try:
        denied = check(port, f"SESSION={tampered}")
        assert denied.denied_response.status.code == 401  # type: ignore[attr-defined]
        assert not denied.HasField("ok_response")  # type: ignore[attr-defined]
        assert check(port, f"SESSION={untouched}").HasField("ok_response")  # type: ignore[attr-defined]
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def two_consecutive_free_ports() -> int:
    """A free port whose successor is free too (worker i listens on port + i)."""
    while True:
        base = free_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", base + 1))
        except OSError:
            continue
        return base


def test_workers_each_answer_on_their_own_port_and_a_dead_worker_is_restarted(valkey_url: str) -> None:
    base = two_consecutive_free_ports()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_REDIS__URL": valkey_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{base}",
        "SIDECAR_LISTEN__HTTP": "",
        "SIDECAR_LISTEN__ADMIN": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for port in (base, base + 1):
            wait_for_port("127.0.0.1", port, 15.0)
            assert check(port, "SESSION=none").denied_response.status.code == 401  # type: ignore[attr-defined]
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False)
        os.kill(int(children.stdout.split()[-1]), signal.SIGKILL)  # one worker of this supervisor dies
        time.sleep(0.3)
        for port in (base, base + 1):
            wait_for_port("127.0.0.1", port, 15.0)
            assert check(port, "SESSION=none").denied_response.status.code == 401  # type: ignore[attr-defined]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()


def metrics_text(admin_port: int) -> str:
    with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def metric(text: str, line_start: str) -> float:
    found = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def test_workers_metrics_add_up_on_worker_zeros_admin_port(valkey_url: str, tmp_path: Path) -> None:
    base = two_consecutive_free_ports()
    admin_port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_REDIS__URL": valkey_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{base}",
        "SIDECAR_LISTEN__HTTP": "",
        "SIDECAR_LISTEN__ADMIN": f"127.0.0.1:{admin_port}",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    denials = 'sidecar_decisions_total{outcome="deny",reason="session_required",status="401"}'
    try:
        for port in (base, base + 1):
            wait_for_port("127.0.0.1", port, 15.0)
        wait_for_port("127.0.0.1", admin_port, 15.0)
        for port, count in ((base, 3), (base + 1, 4)):
            for _ in range(count):
                assert check(port, "theme=dark").denied_response.status.code == 401  # type: ignore[attr-defined]
        text = metrics_text(admin_port)
        assert metric(text, denials) == 7  # both workers' decisions, from worker 0's listener
        assert metric(text, "sidecar_workers_active") == 2
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False)
        os.kill(int(children.stdout.split()[-1]), signal.SIGKILL)  # worker 1 dies and is restarted
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = metrics_text(admin_port)
            if metric(text, "sidecar_workers_active") == 2 and len(list(metrics_dir.glob("gauge_livesum_*"))) == 2:
                break
            time.sleep(0.2)
        assert metric(text, "sidecar_workers_active") == 2  # the dead one's live gauge is gone, not counted
        assert metric(text, denials) == 7  # its counters still count
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert metrics_dir.is_dir()  # an operator's directory is kept (a temporary one would be removed)
    finally:
        proc.kill()
        proc.wait()


def jwks_kids(admin_port: int) -> list[str]:
    with socket.create_connection(("127.0.0.1", admin_port), timeout=5) as sock:
        sock.sendall(b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    body = b"".join(chunks).partition(b"\r\n\r\n")[2]
    return [key["kid"] for key in json.loads(body)["keys"]]


def signing_kid(port: int, token: str) -> str:
    response = check(port, f"SESSION={token}")
    headers = {h.header.key: h.header.value for h in response.ok_response.headers}  # type: ignore[attr-defined]
    header_b64 = headers["x-user-assertion"].split(".")[0]
    header: dict[str, str] = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    return header["kid"]


def test_sighup_rotates_the_assertion_keys_without_a_restart(valkey_url: str, tmp_path: Path) -> None:
    keys = {}
    for kid in ("k1", "k2"):
        keys[kid] = tmp_path / f"{kid}.pem"
        key = ec.generate_private_key(ec.SECP256R1())
        keys[kid].write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    port, admin_port = free_port(), free_port()
    config = tmp_path / "sidecar.yaml"

    def write(*entries: str) -> None:
        listen = {"grpc": f"127.0.0.1:{port}", "http": "", "admin": f"127.0.0.1:{admin_port}"}
        assertion = {"enabled": True, "keys": list(entries)}
        config.write_text(json.dumps({"listen": listen, "redis": {"url": valkey_url}, "assertion": assertion}))

    write(f"k1:{keys['k1']}")
    token = create_session(valkey_url, "alice")
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_LOG__FORMAT": "text"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--config", str(config)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, 15.0)
        wait_for_port("127.0.0.1", admin_port, 15.0)
        assert jwks_kids(admin_port) == ["k1"] and signing_kid(port, token) == "k1"

        def after_hangup() -> list[str]:
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                kids = jwks_kids(admin_port)
                if kids != ["k1"]:
                    return kids
                time.sleep(0.1)
            return jwks_kids(admin_port)

        write(f"k2:{tmp_path / 'missing.pem'}", f"k1:{keys['k1']}")  # a broken step changes nothing
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert jwks_kids(admin_port) == ["k1"] and signing_kid(port, token) == "k1"
        write(f"k2:{keys['k2']}", f"k1:{keys['k1']}")  # rotation: the new key signs, the old one stays published
        assert after_hangup() == ["k2", "k1"]
        assert signing_kid(port, token) == "k2"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
        assert "SIGHUP: the configuration has problems, nothing reloaded" in stderr
        assert "SIGHUP: assertion keys reloaded: k2 signs, k2, k1 published" in stderr
    finally:
        proc.kill()
        proc.wait()


def test_listen_api_serves_the_session_service_on_its_own_port_and_not_on_the_authz_port(
    valkey_url: str, tmp_path: Path
) -> None:
    token = "api-" + "t" * 30
    token_file = tmp_path / "api-token"
    token_file.write_text(token + "\n")
    port, api_port = free_port(), free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_REDIS__URL": valkey_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{port}",
        "SIDECAR_LISTEN__API": f"127.0.0.1:{api_port}",
        "SIDECAR_LISTEN__HTTP": "",
        "SIDECAR_LISTEN__ADMIN": "",
        "SIDECAR_API__ENABLED": "true",
        "SIDECAR_API__TOKEN_FILE": str(token_file),
    }
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port("127.0.0.1", port, 15.0)
        wait_for_port("127.0.0.1", api_port, 15.0)
        with SessionClient(f"127.0.0.1:{api_port}", token, timeout=10) as client:
            issued = client.create("api-user")
        assert check(port, f"SESSION={issued.token}").HasField("ok_response")  # type: ignore[attr-defined]
        with grpc.insecure_channel(f"127.0.0.1:{api_port}") as channel:
            request = health_pb2.HealthCheckRequest(service="sidecar.session.v1.SessionService")
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with (
            SessionClient(f"127.0.0.1:{port}", token, timeout=10) as on_authz_port,
            pytest.raises(RuntimeFailure, match="not served there"),
        ):
            on_authz_port.create("api-user")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


def http_status(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        return int(sock.recv(4096).split(b" ", 2)[1])


@pytest.mark.parametrize(("proxy", "status"), [("any", 403), ("nginx", 401)])
def test_served_http_listener_reads_the_forwarded_headers_of_the_configured_proxy(
    valkey_url: str, proxy: str, status: int
) -> None:
    port, http_port = free_port(), free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_REDIS__URL": valkey_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{port}",
        "SIDECAR_LISTEN__HTTP": f"127.0.0.1:{http_port}",
        "SIDECAR_LISTEN__ADMIN": "",
        "SIDECAR_FORWARD_AUTH__PROXY": proxy,
    }
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", http_port, 15.0, proc=proc)
        # nginx sets X-Original-Method and never X-Forwarded-Method: behind it, a client's X-Forwarded-Method is not
        # read (any reads both, and their disagreement is a 403 forwarded_conflict).
        request = (
            b"GET /forward-auth HTTP/1.1\r\nhost: app\r\nx-original-uri: /a\r\n"
            b"x-original-method: GET\r\nx-forwarded-method: POST\r\n\r\n"
        )
        assert http_status(http_port, request) == status
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


@pytest.mark.parametrize(("token_keys", "warned"), [(False, True), (True, False)])
def test_serve_warns_when_the_store_may_evict_the_shared_key_ring(
    tmp_path: Path, token_keys: bool, warned: bool
) -> None:
    store = servers.start_valkey_server(tmp_path / "evicting")
    try:
        client = redis.Redis.from_url(store.url)
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()
        port = free_port()
        env = {
            "PATH": "/usr/bin:/bin",
            "SIDECAR_REDIS__URL": store.url,
            "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{port}",
            "SIDECAR_LISTEN__HTTP": "",
            "SIDECAR_LISTEN__ADMIN": "",
            "SIDECAR_LOG__FORMAT": "text",
        }
        if token_keys:
            env["SIDECAR_TOKEN__KEYS"] = "k1:" + base64.urlsafe_b64encode(b"k" * 32).decode()
        log = tmp_path / "serve.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env, stderr=out, text=True)
        try:
            wait_for_port("127.0.0.1", port, 15.0, proc=proc)
            # The check runs right after the listeners start: wait for its line (or, when none is due, a while).
            deadline = time.monotonic() + (15.0 if warned else 2.0)
            while "maxmemory-policy" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        err = log.read_text()
        assert ("maxmemory-policy is allkeys-lru" in err) is warned, err
        assert "Traceback" not in err
    finally:
        store.stop()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes ``sock`` (recv returns b"" or the connection resets) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("listener", ["http", "admin"])
def test_served_listeners_apply_the_configured_connection_cap_and_idle_timeout(valkey_url: str, listener: str) -> None:
    port, target = free_port(), free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_REDIS__URL": valkey_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{port}",
        "SIDECAR_LISTEN__HTTP": f"127.0.0.1:{target}" if listener == "http" else "",
        "SIDECAR_LISTEN__ADMIN": f"127.0.0.1:{target}" if listener == "admin" else "",
        "SIDECAR_LISTEN__MAX_CONNECTIONS": "2",
        "SIDECAR_LISTEN__IDLE_TIMEOUT": "1s",
    }
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env, stderr=subprocess.DEVNULL)
    held: list[socket.socket] = []
    try:
        wait_for_port("127.0.0.1", target, 15.0, proc=proc)
        time.sleep(1.5)  # the probe connection of wait_for_port is gone before the two held ones open
        held = [socket.create_connection(("127.0.0.1", target), timeout=5) for _ in range(2)]
        time.sleep(0.3)  # both accepted
        with socket.create_connection(("127.0.0.1", target), timeout=5) as third:
            assert closed_within(third, 0.9), "a third connection was not refused (the defaults allow 1000)"
        # The held ones sent nothing: closed after about 1s of idleness (the default would wait 60s).
        assert all(closed_within(sock, 10.0) for sock in held)
    finally:
        for sock in held:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _wait_for_socket(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {path}")


def _http_over_unix(path: Path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def test_every_listener_serves_on_a_unix_socket(valkey_url: str, tmp_path: Path) -> None:
    sockets = {key: tmp_path / f"{key}.sock" for key in ("grpc", "http", "admin")}
    sockets["http"].write_text("a stale file of a previous run")  # not a socket: refused, named
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_REDIS__URL": valkey_url}
    env.update({f"SIDECAR_LISTEN__{key.upper()}": f"unix:{path}" for key, path in sockets.items()})
    refused = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert refused.returncode == 1 and f"listen.http: cannot listen on unix:{sockets['http']}" in refused.stderr
    assert "Traceback" not in refused.stderr
    sockets["http"].unlink()
    token = create_session(valkey_url, "alice")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        for path in sockets.values():
            _wait_for_socket(path, proc)
        with grpc.insecure_channel(f"unix:{sockets['grpc']}") as channel:
            request = external_auth_pb2.CheckRequest()
            http = request.attributes.request.http
            http.method, http.scheme, http.host, http.path = "GET", "http", "app", "/"
            http.header_map.headers.append(base_pb2.HeaderValue(key="cookie", raw_value=f"SESSION={token}".encode()))
            answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
        assert {h.header.key: h.header.value for h in answer.ok_response.headers}["x-user-id"] == "alice"
        allowed = _http_over_unix(
            sockets["http"], f"GET / HTTP/1.1\r\nhost: app\r\ncookie: SESSION={token}\r\n\r\n".encode()
        )
        assert allowed.startswith(b"HTTP/1.1 200") and b"x-user-id: alice" in allowed.lower()
        assert _http_over_unix(sockets["http"], b"GET / HTTP/1.1\r\nhost: app\r\n\r\n").startswith(b"HTTP/1.1 401")
        assert _http_over_unix(sockets["admin"], b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").startswith(
            b"HTTP/1.1 200"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize("threads", ["0", "1"])
def test_check_and_health_answer_with_any_number_of_grpc_threads_including_none(valkey_url: str, threads: str) -> None:
    proc, port = serve(valkey_url, extra={"SIDECAR_LISTEN__GRPC_THREADS": threads, "SIDECAR_LISTEN__HTTP": ""})
    try:
        token = create_session(valkey_url, "alice")
        allowed = check(port, f"SESSION={token}")
        assert {h.header.key: h.header.value for h in allowed.ok_response.headers}["x-user-id"] == "alice"  # type: ignore[attr-defined]
        assert check(port, "").denied_response.status.code == 401  # type: ignore[attr-defined]
        assert authz_health(port) == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
