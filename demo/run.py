"""``make run``: the whole demo stack on this machine, loopback only.

``python -m demo.run`` (from the repository root: the process helpers it shares with the tests live in
``tests/support/``; this folder is not part of the wheel) starts

* an embedded Valkey on a free port (unless ``SIDECAR_REDIS__URL`` is set: then that store is used),
* the sidecar (``python -m sidecar serve``, default settings: gRPC on 127.0.0.1:9191),
* the echo upstream on 127.0.0.1:8081 and Envoy on 127.0.0.1:8080 (admin 127.0.0.1:9901),

creates a demo session and prints curl lines to try. Ctrl-C (or SIGTERM) stops everything it started; so does
any of them dying (the launcher says which one and exits 1).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.support import processes

LOOPBACK = processes.LOOPBACK
ENVOY_PORT = 8080
ECHO_PORT = 8081
ENVOY_ADMIN_PORT = 9901
DEFAULT_LISTEN = {"grpc": "127.0.0.1:9191", "http": "127.0.0.1:9192", "admin": "127.0.0.1:9090"}
DEMO_USER = ("--user", "alice", "--email", "alice@example.com", "--roles", "admin,dev")
START_TIMEOUT = 20.0
DEMO_ROUTES = "[{prefix: /public, public: true}, {prefix: /admin, roles: [admin]}]"


class LaunchError(Exception):
    """The demo cannot start; the message is the one line shown to the user."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    workdir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> Child:
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):  # Envoy first, the store last
            processes.stop(child.proc)

    def dead(self) -> Child | None:
        for child in self.children:
            if child.proc.poll() is not None:
                return child
        return None


def _split_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise LaunchError(f"{what} {value!r} is not HOST:PORT")
    return host.strip("[]") or LOOPBACK, int(port)


def sidecar_addresses(environ: dict[str, str]) -> dict[str, tuple[str, int] | None]:
    """The sidecar's listen addresses (defaults, or the ``SIDECAR_LISTEN__*`` overrides); None = disabled."""
    out: dict[str, tuple[str, int] | None] = {}
    for key, default in DEFAULT_LISTEN.items():
        value = environ.get(f"SIDECAR_LISTEN__{key.upper()}", default).strip().strip("\"'")
        out[key] = _split_address(value, f"listen.{key}") if value else None
    return out


def check_ports(wanted: dict[str, tuple[str, int]]) -> None:
    for what, (host, port) in wanted.items():
        if processes.port_in_use(host, port):
            raise LaunchError(
                f"port {port} on {host} ({what}) is already in use: stop whatever listens there "
                f"(e.g. `ss -ltnp 'sport = :{port}'`) and run again"
            )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _say(text: str = "") -> None:
    print(text, flush=True)


def _create_demo_session(env: dict[str, str]) -> dict[str, Any]:
    result = processes.sidecar_cli("session", "create", *DEMO_USER, env=env)
    if result.returncode != 0:
        raise LaunchError(
            f"`session-sidecar session create` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    try:
        session: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise LaunchError(f"`session-sidecar session create` printed no JSON: {result.stdout!r}") from None
    if not isinstance(session, dict) or not isinstance(session.get("token"), str):
        raise LaunchError(f"`session-sidecar session create` printed no token: {result.stdout!r}")
    return session


def launch(stack: Stack, environ: dict[str, str]) -> None:
    """Start every process of the demo (registering each in ``stack`` at once) and print how to use it."""
    addresses = sidecar_addresses(environ)
    grpc = addresses["grpc"]
    assert grpc is not None  # listen.grpc cannot be disabled
    wanted: dict[str, tuple[str, int]] = {
        "Envoy listener": (LOOPBACK, ENVOY_PORT),
        "echo upstream": (LOOPBACK, ECHO_PORT),
        "Envoy admin": (LOOPBACK, ENVOY_ADMIN_PORT),
        "sidecar gRPC": grpc,
    }
    for key in ("http", "admin"):
        address = addresses[key]
        if address is not None:
            wanted[f"sidecar {key}"] = address
    check_ports(wanted)

    env: dict[str, str] = {"SIDECAR_ROUTES": environ.get("SIDECAR_ROUTES", DEMO_ROUTES)}
    if environ.get("SIDECAR_REDIS__URL"):
        env["SIDECAR_REDIS__URL"] = environ["SIDECAR_REDIS__URL"]
        _say("valkey     not started: using SIDECAR_REDIS__URL from the environment")
    else:
        valkey_port = processes.free_port()
        log = stack.workdir / "valkey.log"
        child = stack.start("valkey", processes.start_valkey(valkey_port, stack.workdir / "valkey", log), log)
        processes.wait_for_port(LOOPBACK, valkey_port, START_TIMEOUT, proc=child.proc, name="valkey")
        env["SIDECAR_REDIS__URL"] = f"redis://{LOOPBACK}:{valkey_port}/0"
        _say(f"valkey     redis://{LOOPBACK}:{valkey_port}/0 (embedded, in-memory)")

    if addresses["admin"] is not None and "SIDECAR_ASSERTION__ENABLED" not in environ:
        env.update(demo_assertion_env(stack.workdir))
    log = stack.workdir / "sidecar.log"
    child = stack.start("sidecar", processes.start_sidecar(env=env, log_path=log), log)
    processes.wait_for_port(grpc[0], grpc[1], START_TIMEOUT, proc=child.proc, name="sidecar")
    _say(f"sidecar    grpc://{grpc[0]}:{grpc[1]} (ext_authz)")

    log = stack.workdir / "echo.log"
    child = stack.start("echo upstream", processes.start_echo(ECHO_PORT, log), log)
    processes.wait_for_port(LOOPBACK, ECHO_PORT, START_TIMEOUT, proc=child.proc, name="echo upstream")
    _say(f"upstream   http://{LOOPBACK}:{ECHO_PORT} (echoes the headers it receives)")

    config = processes.render_envoy_config(
        processes.ENVOY_TEMPLATE,
        listen_port=ENVOY_PORT,
        admin_port=ENVOY_ADMIN_PORT,
        sidecar_port=grpc[1],
        upstream_port=ECHO_PORT,
        out=stack.workdir / "envoy.yaml",
    )
    log = stack.workdir / "envoy.log"
    child = stack.start("envoy", processes.start_envoy(config, log), log)
    processes.wait_for_port(LOOPBACK, ENVOY_PORT, START_TIMEOUT, proc=child.proc, name="envoy")
    _say(f"envoy      http://{LOOPBACK}:{ENVOY_PORT} (admin http://{LOOPBACK}:{ENVOY_ADMIN_PORT})")

    _print_usage(stack, _create_demo_session(env), env["SIDECAR_REDIS__URL"], addresses["admin"])


def demo_assertion_env(workdir: Path) -> dict[str, str]:
    """Turn the signed identity assertion on with a throwaway ES256 key in the demo's work directory."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = workdir / "assertion-demo.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    return {"SIDECAR_ASSERTION__ENABLED": "true", "SIDECAR_ASSERTION__KEYS": f"demo:{path}"}


def _print_usage(stack: Stack, session: dict[str, Any], redis_url: str, admin: tuple[str, int] | None = None) -> None:
    token = str(session["token"])
    base = f"http://{LOOPBACK}:{ENVOY_PORT}"
    cookie = shlex.quote(f"Cookie: SESSION={token}")
    _say()
    cli = f"SIDECAR_REDIS__URL={redis_url} .venv/bin/session-sidecar"
    _say(f"Routes: {DEMO_ROUTES} (SIDECAR_ROUTES)")
    _say("A session was created with:")
    _say(f"  {cli} session create {' '.join(DEMO_USER)}")
    _say(f"  token:      {token}")
    _say(f"  session_id: {session.get('session_id', '?')}")
    _say()
    _say("Try it:")
    _say("  # allowed: the upstream sees x-user-id: alice, x-user-email, x-user-roles, x-session-id")
    _say(f"  curl -s -H {cookie} {base}/hello")
    _say("  # denied: no session cookie -> 401")
    _say(f"  curl -s -i {base}/hello")
    _say("  # spoofing with a valid cookie: the upstream sees the trusted x-user-id (alice), not 'admin'")
    _say(f"  curl -s -H {cookie} -H 'x-user-id: admin' {base}/hello")
    _say("  # spoofing without a cookie: denied (401)")
    _say(f"  curl -s -i -H 'x-user-id: admin' {base}/hello")
    _say("  # public route: allowed anonymously, the spoofed header is removed before the upstream")
    _say(f"  curl -s -H 'x-user-id: admin' {base}/public/page")
    _say("  # browser navigation with deny.login_url set would get a 302; try it with SIDECAR_DENY__LOGIN_URL=...")
    if admin is not None:
        admin_url = f"http://{admin[0]}:{admin[1]}"
        _say("  # the allowed request also carried x-user-assertion (a signed JWT); its public keys, and the metrics:")
        _say(f"  curl -s {admin_url}/.well-known/jwks.json")
        _say(f"  curl -s {admin_url}/metrics | grep ^sidecar_decisions")
    _say("  # revoke, then the first curl line answers 401:")
    _say(f"  {cli} session revoke {token}")
    _say()
    _say(f"Logs: {stack.workdir}   (sidecar.log: JSON decision lines; envoy.log: access log with user_id)")
    _say("Ctrl-C stops everything.")


def main() -> int:
    stop_requested = threading.Event()
    received: list[int] = []

    launching = [True]

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop_requested.set()
        if launching[0]:
            raise KeyboardInterrupt  # abandon a start-up wait at once; `finally` stops what was started

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    stack = Stack(Path(tempfile.mkdtemp(prefix="session-sidecar-run-")))
    code = 0
    try:
        try:
            launch(stack, dict(os.environ))
        except KeyboardInterrupt:
            _say("\ninterrupted during start-up: stopping")
            return 130
        except (LaunchError, processes.ProcessError, OSError, subprocess.SubprocessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            dead = stack.dead()
            if dead is not None:
                print(f"--- last lines of {dead.log} ---\n{_tail(dead.log)}", file=sys.stderr)
            return 1
        finally:
            launching[0] = False
        while not stop_requested.wait(0.5):
            dead = stack.dead()
            if dead is not None:
                print(
                    f"error: {dead.name} exited (code {dead.proc.returncode}); stopping the rest",
                    file=sys.stderr,
                )
                print(f"--- last lines of {dead.log} ---\n{_tail(dead.log)}", file=sys.stderr)
                code = 1
                break
        if received:
            _say(f"\nreceived {signal.Signals(received[0]).name}: stopping")
    finally:
        stack.stop_all()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
