"""The demo launchers (``make run``, ``make run-express``) as a user runs them: started as a process, their printed
curl lines run as printed, stopped with Ctrl-C.

Envoy, the echo upstream and the sidecar are moved off the demo's fixed ports (``DEMO_*_PORT``,
``SIDECAR_LISTEN__*``) so the demo runs beside the other tests' stacks; its work directory goes under tmp_path.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.support import frameworks, processes

pytestmark = pytest.mark.e2e

START_SECONDS = 60.0
READY_LINE = "Ctrl-C stops everything."


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    lines: list[str]
    stderr: Path

    def line_after(self, comment: str) -> str:
        """The command printed under the comment line that starts with ``comment``."""
        for index, line in enumerate(self.lines):
            if line.strip().startswith(f"# {comment}"):
                return self.lines[index + 1].strip()
        raise AssertionError(f"no line after {comment!r} in:\n" + "\n".join(self.lines))


def _demo_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "DEMO_"))}
    for variable in ("DEMO_ENVOY_PORT", "DEMO_ECHO_PORT", "DEMO_ENVOY_ADMIN_PORT"):
        env[variable] = str(processes.free_port())
    for listener in ("GRPC", "HTTP", "ADMIN"):
        env[f"SIDECAR_LISTEN__{listener}"] = f"{processes.LOOPBACK}:{processes.free_port()}"
    env["TMPDIR"] = str(tmp_path)  # the launcher's work directory (logs, keys, the app's secret)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _read_lines(stream: queue.Queue[str | None], pipe: IO[str]) -> None:
    for line in iter(pipe.readline, ""):
        stream.put(line.rstrip("\n"))
    stream.put(None)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> Demo:
        stderr = tmp_path / "launcher.stderr"
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "demo.run", *args],
                cwd=processes.REPO_ROOT,
                env=_demo_env(tmp_path),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        started.append(proc)
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(lines, proc.stdout), daemon=True).start()
        seen: list[str] = []
        deadline = time.monotonic() + START_SECONDS
        while not seen or seen[-1] != READY_LINE:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(
                    f"the demo did not come up within {START_SECONDS:g}s (exit {proc.poll()}):\n"
                    + "\n".join(seen)
                    + "\n--- stderr ---\n"
                    + stderr.read_text()
                )
            seen.append(line)
        return Demo(proc, seen, stderr)

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def curl(line: str) -> httpx.Response:
    """Run a printed ``curl -s [-i] [-H header]... URL`` line as curl would (shell quoting as printed)."""
    args = shlex.split(line)
    assert args[0] == "curl", line
    headers: list[tuple[str, str]] = []
    url = None
    rest = iter(args[1:])
    for arg in rest:
        if arg == "-H":
            name, _, value = next(rest).partition(":")
            headers.append((name.strip(), value.strip()))
        elif arg in ("-s", "-i"):
            continue
        else:
            assert url is None, f"two URLs in {line!r}"
            url = arg
    assert url is not None and url.startswith(f"http://{processes.LOOPBACK}:"), line
    return httpx.get(url, headers=headers, timeout=10)


def stop(demo: Demo) -> tuple[int, str]:
    demo.proc.send_signal(signal.SIGINT)
    code = demo.proc.wait(30)
    return code, demo.stderr.read_text()


def upstream_identity(response: httpx.Response) -> tuple[str, str, str]:
    assert response.status_code == 200, f"{response.status_code} {response.text[:300]}"
    headers = response.json()["headers"]
    return headers["x-user-id"][0], headers["x-user-email"][0], headers["x-user-roles"][0]


def test_make_run_prints_curl_lines_that_show_the_identity_and_the_revocation(launch: Callable[..., Demo]) -> None:
    demo = launch()
    allowed = demo.line_after("allowed:")
    assert upstream_identity(curl(allowed)) == ("alice", "alice@example.com", "admin,dev")
    assert curl(demo.line_after("denied: no session cookie")).status_code == 401
    revoke = shlex.split(demo.line_after("revoke, then"))
    env_assignment, cli = revoke[0], revoke[1:]
    name, _, value = env_assignment.partition("=")
    assert name == "SIDECAR_REDIS__URL" and cli[0] == ".venv/bin/session-sidecar"
    result = processes.sidecar_cli(*cli[1:], env={"SIDECAR_REDIS__URL": value})
    assert result.returncode == 0, result.stderr
    assert curl(allowed).status_code == 401
    assert stop(demo)[0] == 0


@pytest.mark.skipif(frameworks.skip_reason("express") is not None, reason=f"{frameworks.skip_reason('express')}")
def test_make_run_express_shows_the_express_user_upstream_and_its_logout_denied(launch: Callable[..., Demo]) -> None:
    demo = launch("express")
    allowed = demo.line_after("allowed:")
    assert "connect.sid=s%3A" in allowed
    assert upstream_identity(curl(allowed)) == ("alice", "alice@example.com", "admin,dev")
    assert curl(demo.line_after("the same cookie with a forged signature")).status_code == 401
    metrics = shlex.split(demo.line_after("reads of the Express sessions").split("|")[0])
    assert 'sidecar_source_reads_total{result="session",source="express"}' in httpx.get(metrics[-1]).text
    assert curl(demo.line_after("log out through the app")).status_code == 200
    assert curl(allowed).status_code == 401  # the very next request: framework sessions are not cached
    code, stderr = stop(demo)
    assert code == 0, stderr


def test_make_run_express_without_node_says_make_framework_deps_and_exits_1(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "demo.run", "express"],
        cwd=processes.REPO_ROOT,
        env={**_demo_env(tmp_path), "PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "make framework-deps" in result.stderr
    assert "node is not installed" in result.stderr
    assert result.stdout == ""  # nothing was started
