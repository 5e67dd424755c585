"""The container image (issue #15): ``make image`` (image/build.sh) builds the Dockerfile with Debian's buildah from a
local Debian base, and the image runs the way the chart runs it: as the chart's UID/GID, root filesystem read-only.

The image is run with ``buildah run`` (chroot isolation, host network) against a Valkey on the host's loopback. The
first build of a machine makes the base with debootstrap (about 2 minutes, cached under /var/tmp); later builds take
about 2 minutes on a shared 2-core box.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import free_port

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "image" / "build.sh"
VALUES = REPO / "helm" / "session-sidecar" / "values.yaml"
IMAGE = "localhost/session-sidecar:test"
# A cold build (debootstrap + imports + pip) takes ~6 minutes here; the bound leaves room for a slow mirror.
BUILD_TIMEOUT = 900
RUN_TIMEOUT = 60

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="tests/image need root (debootstrap, buildah chroot isolation)"),
    pytest.mark.timeout(BUILD_TIMEOUT + 300),
]


def chart_user() -> str:
    context = yaml.safe_load(VALUES.read_text())["securityContext"]
    return f"{context['runAsUser']}:{context['runAsGroup']}"


@pytest.fixture(scope="module")
def buildah() -> list[str]:
    """``buildah`` with the flags of image/build.sh's own store."""
    flags = subprocess.run([str(BUILD), "--env"], capture_output=True, text=True, check=True).stdout.split()
    return ["buildah", *flags]


@pytest.fixture(scope="module")
def image(buildah: list[str]) -> Iterator[str]:
    env = {**os.environ, "IMAGE": IMAGE}
    result = subprocess.run([str(BUILD)], env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if result.returncode != 0:
        pytest.fail(f"image/build.sh failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-6000:]}")
    try:
        yield IMAGE
    finally:
        subprocess.run([*buildah, "rmi", IMAGE], capture_output=True, check=False)


@dataclass
class Container:
    """A working container of the image whose root filesystem is mounted read-only, as the chart asks."""

    buildah: list[str]
    name: str

    def command(self, argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        flags = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return [
            *self.buildah,
            "run",
            "--isolation=chroot",
            "--network=host",
            f"--user={chart_user()}",
            *flags,
            self.name,
            "--",
            *argv,
        ]

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv, env), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(["python3", "-c", code])


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def container(buildah: list[str], image: str) -> Iterator[Container]:
    name = subprocess.run(
        [*buildah, "from", "--pull=never", "--quiet", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    rootfs = Path(subprocess.run([*buildah, "mount", name], capture_output=True, text=True, check=True).stdout.strip())
    mounted: list[Path] = []
    try:
        # A runtime bind-mounts /etc/hosts, /etc/resolv.conf and /etc/hostname, creating them first when missing
        # (runc does so before it makes the root read-only); buildah would try after, so they are created here.
        for mountpoint in ("etc/hosts", "etc/resolv.conf", "etc/hostname"):
            (rootfs / mountpoint).touch()
        _mount("--bind", str(rootfs), str(rootfs))
        mounted.append(rootfs)
        _mount("-o", "remount,bind,ro", str(rootfs))
        # buildah writes and removes /run/.containerenv around every run: a 1 MiB tmpfs, root-owned 0755, that the
        # container's UID cannot write either.
        _mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(rootfs / "run"))
        mounted.append(rootfs / "run")
        yield Container(buildah, name)
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], capture_output=True, check=False)
        subprocess.run([*buildah, "rm", name], capture_output=True, check=False)


def image_config(buildah: list[str], image: str) -> dict[str, Any]:
    out = subprocess.run([*buildah, "inspect", "--type", "image", image], capture_output=True, text=True, check=True)
    config: dict[str, Any] = json.loads(out.stdout)["OCIv1"]["config"]
    return config


def sidecar_env(redis_url: str, grpc_port: int) -> dict[str, str]:
    return {
        "SIDECAR_REDIS__URL": redis_url,
        "SIDECAR_LISTEN__GRPC": f"127.0.0.1:{grpc_port}",
        "SIDECAR_LISTEN__HTTP": "",
        "SIDECAR_LISTEN__ADMIN": "",
    }


def check(port: int, cookie: str | None) -> Any:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.scheme, http.host, http.path = "GET", "http", "app", "/x"
    if cookie is not None:
        http.header_map.headers.append(base_pb2.HeaderValue(key="cookie", raw_value=cookie.encode()))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)


def health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status)


def wait_serving(port: int, proc: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if health(port, "envoy.service.auth.v3.Authorization") == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"serve in the image never became SERVING on {port} (exit {proc.returncode}):\n{err[-4000:]}")
        time.sleep(0.2)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


def sidecar_pid(runner: subprocess.Popen[str]) -> int:
    """The session-sidecar process ``buildah run`` started: the container's main process, as Kubernetes sees it."""
    for pid in descendants(runner.pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # the interpreter running the console script, not buildah's helper that forked it
            if argv[0].endswith(b"/python3") and argv[1].endswith(b"/bin/session-sidecar"):
                return pid
    pytest.fail("no session-sidecar process under buildah run")


def test_image_runs_session_sidecar_serve_as_the_chart_user(buildah: list[str], image: str) -> None:
    config = image_config(buildah, image)
    assert config["Entrypoint"] == ["session-sidecar"]
    assert config["Cmd"] == ["serve"]
    assert config["User"] == chart_user()
    assert "Healthcheck" not in config


def test_runs_as_the_chart_user_on_a_read_only_root(container: Container) -> None:
    probe = container.python(
        "import errno, os\n"
        "print(os.getuid(), os.getgid())\n"
        "for path in ('/probe', '/opt/session-sidecar/probe', '/etc/probe', '/tmp/probe'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "    except OSError as error:\n"
        "        print(path, errno.errorcode[error.errno])\n"
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0] == chart_user().replace(":", " ")
    probed = ("/probe", "/opt/session-sidecar/probe", "/etc/probe", "/tmp/probe")
    assert lines[1:] == [f"{path} EROFS" for path in probed]


def test_runtime_has_no_shell_or_package_tools_but_trusts_the_ca_bundle(container: Container) -> None:
    probe = container.python(
        "import os, ssl\n"
        "tools = ('/bin/sh', '/bin/bash', '/bin/dash', '/usr/bin/apt-get', '/usr/bin/dpkg', '/usr/bin/perl',"
        " '/usr/bin/env', '/opt/session-sidecar/bin/pip')\n"
        "print(sorted(t for t in tools if os.path.lexists(t)))\n"
        "print(ssl.create_default_context().cert_store_stats()['x509_ca'] > 100)\n"
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["[]", "True"]
    shell = container.run(["/bin/sh", "-c", "true"])
    assert shell.returncode != 0


def test_config_check_prints_the_effective_config_and_rejects_bad_input_in_one_line(
    container: Container, valkey_url: str
) -> None:
    good = container.run(["session-sidecar", "config", "check"], env=sidecar_env(valkey_url, 9191))
    assert good.returncode == 0, good.stderr
    effective = yaml.safe_load(good.stdout)
    assert effective["redis"]["url"] == valkey_url
    assert effective["listen"]["grpc"] == "127.0.0.1:9191"
    bad = container.run(
        ["session-sidecar", "config", "check"], env={**sidecar_env(valkey_url, 9191), "SIDECAR_LISTEN__GRPC": "nope"}
    )
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert "listen.grpc" in bad.stderr
    assert "SIDECAR_LISTEN__GRPC" in bad.stderr


def test_serve_answers_health_and_checks_against_the_host_store_and_stops_on_sigterm(
    container: Container, valkey_url: str
) -> None:
    port = free_port()
    env = sidecar_env(valkey_url, port)
    created = container.run(["session-sidecar", "session", "create", "--user", "alice", "--roles", "admin"], env=env)
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["token"]
    proc = subprocess.Popen(
        container.command(["session-sidecar", "serve"], env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_serving(port, proc)
        assert health(port, "") == health_pb2.HealthCheckResponse.SERVING
        assert check(port, None).denied_response.status.code == 401
        allowed = check(port, f"SESSION={token}")
        assert allowed.HasField("ok_response")
        headers = {h.header.key: h.header.value for h in allowed.ok_response.headers}
        assert headers["x-user-id"] == "alice"
        # Kubernetes stops a container with SIGTERM to its main process (buildah run would SIGKILL it instead)
        os.kill(sidecar_pid(proc), signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-4000:]
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
