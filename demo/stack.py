"""What the demo launchers share: the processes they started, how to stop them, and how they talk to the user."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import processes

LOOPBACK = processes.LOOPBACK


class LaunchError(Exception):
    """The demo cannot start; the message is the one line shown to the user."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass(frozen=True)
class Watched:
    """A server started by a helper that keeps its process to itself (a framework app): alive while it answers."""

    name: str
    alive: Callable[[], bool]
    log: Path | None


@dataclass(frozen=True)
class Dead:
    name: str
    log: Path | None
    code: int | None  # None: it stopped answering (its exit code is not ours to see)


@dataclass
class Stack:
    workdir: Path
    children: list[Child] = field(default_factory=list)
    watched: list[Watched] = field(default_factory=list)
    # Servers started as context managers (the Express app): closed before the children, so before the store.
    contexts: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start(self, name: str, proc: subprocess.Popen[bytes], log: Path) -> Child:
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        try:
            self.contexts.close()
        finally:
            for child in reversed(self.children):  # Envoy first, the store last
                processes.stop(child.proc)

    def dead(self) -> Dead | None:
        for child in self.children:
            if child.proc.poll() is not None:
                return Dead(child.name, child.log, child.proc.returncode)
        for watched in self.watched:
            if not watched.alive():
                return Dead(watched.name, watched.log, None)
        return None


@dataclass(frozen=True)
class Running:
    """The demo stack, up: what a demo needs to print its curl lines."""

    env: dict[str, str]  # the sidecar's SIDECAR_* settings
    redis_url: str
    envoy_port: int
    admin: tuple[str, int] | None

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.envoy_port}"


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def say(text: str = "") -> None:
    print(text, flush=True)


def print_footer(stack: Stack) -> None:
    say(f"Logs: {stack.workdir}   (sidecar.log: JSON decision lines; envoy.log: access log with user_id)")
    say("Ctrl-C stops everything.")
