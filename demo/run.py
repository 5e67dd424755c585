"""``make run``: the whole demo stack on this machine, loopback only.

``python -m demo.run`` (from the repository root: the process helpers it shares with the tests live in
``tests/support/``; this folder is not part of the wheel) starts

* an embedded Valkey on a free port (unless ``SIDECAR_REDIS__URL`` is set: then that store is used),
* the sidecar (``python -m sidecar serve``, default settings: gRPC on 127.0.0.1:9191),
* the echo upstream on 127.0.0.1:8081 and Envoy on 127.0.0.1:8080 (admin 127.0.0.1:9901),

creates a demo session and prints curl lines to try. ``python -m demo.run express`` (``make run-express``) starts
the same stack reading Express sessions too, and the real Express app of ``examples/frameworks/express`` on the
same Valkey (``demo/express.py``). Ctrl-C (or SIGTERM) stops everything it started; so does any of them dying (the
launcher says which one and exits 1).

``DEMO_ENVOY_PORT``, ``DEMO_ECHO_PORT`` and ``DEMO_ENVOY_ADMIN_PORT`` move Envoy and the echo upstream off their
fixed ports (the sidecar's move with ``SIDECAR_LISTEN__*``), so a test can run the demo beside other stacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from demo import express
from demo.stack import LaunchError, Running, Stack, print_footer, say, tail
from tests.support import processes

LOOPBACK = processes.LOOPBACK
ENVOY_PORT = 8080
ECHO_PORT = 8081
ENVOY_ADMIN_PORT = 9901
DEFAULT_LISTEN = {"grpc": "127.0.0.1:9191", "http": "127.0.0.1:9192", "admin": "127.0.0.1:9090"}
DEMO_USER = ("--user", "alice", "--email", "alice@example.com", "--roles", "admin,dev")
START_TIMEOUT = 20.0
DEMO_ROUTES = "[{prefix: /public, public: true}, {prefix: /admin, roles: [admin]}]"


_PORT_VARIABLES = (("envoy", "DEMO_ENVOY_PORT"), ("echo", "DEMO_ECHO_PORT"), ("envoy_admin", "DEMO_ENVOY_ADMIN_PORT"))


@dataclass(frozen=True)
class Ports:
    """Envoy's and the echo upstream's ports (fixed, unless ``DEMO_*_PORT`` moves them)."""

    envoy: int = ENVOY_PORT
    echo: int = ECHO_PORT
    envoy_admin: int = ENVOY_ADMIN_PORT

    @classmethod
    def of(cls, environ: dict[str, str]) -> Ports:
        values: dict[str, int] = {}
        for name, variable in _PORT_VARIABLES:
            text = environ.get(variable, "").strip()
            if text:
                if not text.isdigit() or not 0 < int(text) < 65536:
                    raise LaunchError(f"{variable}={text!r} is not a TCP port")
                values[name] = int(text)
        return cls(**values)


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


def launch(stack: Stack, environ: dict[str, str], demo: str = "native") -> None:
    """Start every process of the demo (registering each in ``stack`` at once) and print how to use it."""
    if demo == "express":
        express.check_available(environ)  # before anything starts: nothing to stop when it cannot run
        extra = express.sidecar_env(stack.workdir)
        running = start_stack(stack, environ, extra)
        express.run(stack, running)
    else:
        running = start_stack(stack, environ)
        _print_usage(stack, _create_demo_session(running.env), running)


def start_stack(stack: Stack, environ: dict[str, str], extra: dict[str, str] | None = None) -> Running:
    """Valkey (unless SIDECAR_REDIS__URL), the sidecar with ``extra`` settings, the echo upstream and Envoy."""
    ports = Ports.of(environ)
    addresses = sidecar_addresses(environ)
    grpc = addresses["grpc"]
    assert grpc is not None  # listen.grpc cannot be disabled
    wanted: dict[str, tuple[str, int]] = {
        "Envoy listener": (LOOPBACK, ports.envoy),
        "echo upstream": (LOOPBACK, ports.echo),
        "Envoy admin": (LOOPBACK, ports.envoy_admin),
        "sidecar gRPC": grpc,
    }
    for key in ("http", "admin"):
        address = addresses[key]
        if address is not None:
            wanted[f"sidecar {key}"] = address
    check_ports(wanted)

    env: dict[str, str] = {"SIDECAR_ROUTES": environ.get("SIDECAR_ROUTES", DEMO_ROUTES), **(extra or {})}
    if environ.get("SIDECAR_REDIS__URL"):
        env["SIDECAR_REDIS__URL"] = environ["SIDECAR_REDIS__URL"]
        say("valkey     not started: using SIDECAR_REDIS__URL from the environment")
    else:
        valkey_port = processes.free_port()
        log = stack.workdir / "valkey.log"
        child = stack.start("valkey", processes.start_valkey(valkey_port, stack.workdir / "valkey", log), log)
        processes.wait_for_port(LOOPBACK, valkey_port, START_TIMEOUT, proc=child.proc, name="valkey")
        env["SIDECAR_REDIS__URL"] = f"redis://{LOOPBACK}:{valkey_port}/0"
        say(f"valkey     redis://{LOOPBACK}:{valkey_port}/0 (embedded, in-memory)")

    if addresses["admin"] is not None and "SIDECAR_ASSERTION__ENABLED" not in environ:
        env.update(demo_assertion_env(stack.workdir))
    log = stack.workdir / "sidecar.log"
    child = stack.start("sidecar", processes.start_sidecar(env=env, log_path=log), log)
    processes.wait_for_port(grpc[0], grpc[1], START_TIMEOUT, proc=child.proc, name="sidecar")
    say(f"sidecar    grpc://{grpc[0]}:{grpc[1]} (ext_authz)")

    log = stack.workdir / "echo.log"
    child = stack.start("echo upstream", processes.start_echo(ports.echo, log), log)
    processes.wait_for_port(LOOPBACK, ports.echo, START_TIMEOUT, proc=child.proc, name="echo upstream")
    say(f"upstream   http://{LOOPBACK}:{ports.echo} (echoes the headers it receives)")

    config = processes.render_envoy_config(
        processes.ENVOY_TEMPLATE,
        listen_port=ports.envoy,
        admin_port=ports.envoy_admin,
        sidecar_port=grpc[1],
        upstream_port=ports.echo,
        out=stack.workdir / "envoy.yaml",
    )
    log = stack.workdir / "envoy.log"
    child = stack.start("envoy", processes.start_envoy(config, log), log)
    processes.wait_for_port(LOOPBACK, ports.envoy, START_TIMEOUT, proc=child.proc, name="envoy")
    say(f"envoy      http://{LOOPBACK}:{ports.envoy} (admin http://{LOOPBACK}:{ports.envoy_admin})")
    return Running(env, env["SIDECAR_REDIS__URL"], ports.envoy, addresses["admin"])


def demo_assertion_env(workdir: Path) -> dict[str, str]:
    """Turn the signed identity assertion on with a throwaway ES256 key in the demo's work directory."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = workdir / "assertion-demo.pem"
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    return {"SIDECAR_ASSERTION__ENABLED": "true", "SIDECAR_ASSERTION__KEYS": f"demo:{path}"}


def _print_usage(stack: Stack, session: dict[str, Any], running: Running) -> None:
    token = str(session["token"])
    base = running.base
    cookie = shlex.quote(f"Cookie: SESSION={token}")
    say()
    cli = f"SIDECAR_REDIS__URL={running.redis_url} .venv/bin/session-sidecar"
    say(f"Routes: {DEMO_ROUTES} (SIDECAR_ROUTES)")
    say("A session was created with:")
    say(f"  {cli} session create {' '.join(DEMO_USER)}")
    say(f"  token:      {token}")
    say(f"  session_id: {session.get('session_id', '?')}")
    say()
    say("Try it:")
    say("  # allowed: the upstream sees x-user-id: alice, x-user-email, x-user-roles, x-session-id")
    say(f"  curl -s -H {cookie} {base}/hello")
    say("  # denied: no session cookie -> 401")
    say(f"  curl -s -i {base}/hello")
    say("  # spoofing with a valid cookie: the upstream sees the trusted x-user-id (alice), not 'admin'")
    say(f"  curl -s -H {cookie} -H 'x-user-id: admin' {base}/hello")
    say("  # spoofing without a cookie: denied (401)")
    say(f"  curl -s -i -H 'x-user-id: admin' {base}/hello")
    say("  # public route: allowed anonymously, the spoofed header is removed before the upstream")
    say(f"  curl -s -H 'x-user-id: admin' {base}/public/page")
    say("  # browser navigation with deny.login_url set would get a 302; try it with SIDECAR_DENY__LOGIN_URL=...")
    if running.admin is not None:
        admin_url = f"http://{running.admin[0]}:{running.admin[1]}"
        say("  # the allowed request also carried x-user-assertion (a signed JWT); its public keys, and the metrics:")
        say(f"  curl -s {admin_url}/.well-known/jwks.json")
        say(f"  curl -s {admin_url}/metrics | grep ^sidecar_decisions")
    say("  # revoke, then the first curl line answers 401:")
    say(f"  {cli} session revoke {token}")
    say()
    print_footer(stack)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo.run", description="The session-sidecar demo stack on this machine (loopback only)."
    )
    parser.add_argument(
        "demo",
        nargs="?",
        choices=("native", "express"),
        default="native",
        help="native: the sidecar's own sessions (make run); express: sessions a real Express app keeps in the "
        "same Valkey, read as they are (make run-express)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    demo = _arguments(argv).demo
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
            launch(stack, dict(os.environ), demo)
        except KeyboardInterrupt:
            say("\ninterrupted during start-up: stopping")
            return 130
        except (LaunchError, processes.ProcessError, OSError, subprocess.SubprocessError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            dead = stack.dead()
            if dead is not None and dead.log is not None:
                print(f"--- last lines of {dead.log} ---\n{tail(dead.log)}", file=sys.stderr)
            return 1
        finally:
            launching[0] = False
        while not stop_requested.wait(0.5):
            dead = stack.dead()
            if dead is not None:
                how = f"exited (code {dead.code})" if dead.code is not None else "stopped answering"
                print(f"error: {dead.name} {how}; stopping the rest", file=sys.stderr)
                if dead.log is not None:
                    print(f"--- last lines of {dead.log} ---\n{tail(dead.log)}", file=sys.stderr)
                code = 1
                break
        if received:
            say(f"\nreceived {signal.Signals(received[0]).name}: stopping")
    finally:
        stack.stop_all()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
