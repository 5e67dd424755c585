"""Secrets from files: every file the config names is read here, as a bounded regular file.

Models call :func:`secrets_from_files` from a ``mode="before"`` validator, so a validated model already holds what
its files say (``RedisConfig.password`` from ``password_file`` ...) and is never changed after it is built. A file
that cannot be used does not stop the validation of the rest of its section: its key's value is replaced by a
:class:`FileProblem`, which the key's :data:`FilePath` type reports at that key.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator

from sidecar.config.models.base import has_control

MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_FILE_BYTES = 64 * 1024  # a password, an API token, a PEM key, a CA bundle


class FileProblem(ValueError):
    """What is wrong with a file key (never quoting the file's content), carried in place of its value until the
    key's validator reports it."""


class Unreadable(FileProblem):
    """A file the config names cannot be read; the message says why, without the path or any of the content."""


def read_bounded(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Anything else is refused before it is read: a device (``/dev/zero`` would be read until memory runs out), a
    FIFO (opened without blocking, so a FIFO with no writer cannot hang the load), a socket, a directory, or a file
    larger than ``limit`` (also one that grows past it while being read).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise Unreadable(exc.strerror or exc.__class__.__name__) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise Unreadable("it is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable("it is not a regular file (a device, FIFO or socket)")
        too_large = Unreadable(f"it is larger than {_size(limit)}")
        if info.st_size > limit:
            raise too_large
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            raise too_large
        return b"".join(chunks)
    except OSError as exc:
        raise Unreadable(exc.strerror or exc.__class__.__name__) from None
    finally:
        os.close(fd)


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit // 1024} KiB"


_PATH_LIKE = re.compile(r"(?:/|\./|\.\./|~/)[^\s]{0,1020}")


def shown_path(path: str) -> str:
    """A file key's value as a message may show it: quoted when it reads as a path, else not at all (a secret
    pasted where its file's path belongs must not be echoed back)."""
    if _PATH_LIKE.fullmatch(path) and not has_control(path) and "-----" not in path:
        return repr(path)
    return "the file it names"


def read_file(path: str) -> bytes:
    """A secret-bearing file's bytes; raises :class:`Unreadable` naming the file only when it reads as a path."""
    try:
        return read_bounded(path, MAX_SECRET_FILE_BYTES)
    except Unreadable as exc:
        raise Unreadable(f"cannot read {shown_path(path)}: {exc}") from None


def read_text(path: str) -> str:
    """A secret file's text (UTF-8, surrounding whitespace stripped)."""
    try:
        return read_file(path).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Unreadable(f"cannot read {shown_path(path)}: it is not UTF-8 text") from None


def _reported(value: Any) -> Any:
    if isinstance(value, FileProblem):
        raise value
    return value


FilePath = Annotated[str, BeforeValidator(_reported)]
"""A key naming a file: a string, or the problem :func:`secrets_from_files` found with the file."""

# Given a file key's path, what goes into the model: {key: value} to add, or a FileProblem for the file key.
Reader = Callable[[str], Mapping[str, Any]]


def secrets_from_files(data: Any, readers: Mapping[str, Reader]) -> Any:
    """``data`` (a section's raw input) with what each named file holds added by its reader.

    ``readers`` maps a file key to the function that reads its path; a key that is absent, empty or not a string is
    left to the field's own validation. A reader's :class:`FileProblem` (such as :class:`Unreadable`) replaces the
    path.
    """
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for key, reader in readers.items():
        path = data.get(key)
        if not isinstance(path, str) or not path:
            continue
        try:
            out.update(reader(path))
        except FileProblem as exc:
            out[key] = exc
    return out
