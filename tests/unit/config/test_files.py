"""Secrets from files: every file the config names is a bounded regular file, named only when its name reads as
a path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.config import MAX_CONFIG_BYTES, MAX_SECRET_FILE_BYTES
from sidecar.config.files import FileProblem, secrets_from_files
from tests.unit.config.support import only_problem


def test_a_path_that_reads_as_a_path_is_still_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "redis-pass")
    problem = only_problem(environ={"SIDECAR_REDIS__PASSWORD_FILE": missing})
    assert problem.startswith(f"redis.password_file: cannot read {missing!r}: No such file or directory")


def fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "directory"])
@pytest.mark.parametrize(
    "key",
    [
        "SIDECAR_CONFIG",
        "SIDECAR_REDIS__PASSWORD_FILE",
        "SIDECAR_REDIS__SENTINEL_PASSWORD_FILE",
        "SIDECAR_API__TOKEN_FILE",
        "SIDECAR_ASSERTION__KEYS",
        "SIDECAR_REDIS__TLS_CA_FILE",
    ],
)
def test_a_file_that_is_not_a_regular_file_is_refused_before_it_is_read(tmp_path: Path, key: str, special: str) -> None:
    path = {"/dev/zero": "/dev/zero", "fifo": fifo(tmp_path), "directory": str(tmp_path)}[special]
    environ = {key: f"k1:{path}" if key == "SIDECAR_ASSERTION__KEYS" else path}
    environ |= {"SIDECAR_API__ENABLED": "true", "SIDECAR_ASSERTION__ENABLED": "true"}
    if key != "SIDECAR_API__TOKEN_FILE":
        token = tmp_path / "token"
        token.write_text("t" * 40)
        environ["SIDECAR_API__TOKEN_FILE"] = str(token)
    if key != "SIDECAR_ASSERTION__KEYS":
        environ["SIDECAR_ASSERTION__ENABLED"] = "false"
    problem = only_problem(environ=environ)  # a FIFO with no writer would block here; /dev/zero never end
    reason = "it is a directory" if special == "directory" else "it is not a regular file"
    assert "cannot read" in problem and reason in problem, problem


@pytest.mark.parametrize(
    ("key", "limit"),
    [("SIDECAR_CONFIG", MAX_CONFIG_BYTES), ("SIDECAR_REDIS__PASSWORD_FILE", MAX_SECRET_FILE_BYTES)],
)
def test_a_file_larger_than_its_bound_is_refused(tmp_path: Path, key: str, limit: int) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"#" * (limit + 1))
    problem = only_problem(environ={key: str(big)})
    assert "cannot read" in problem and "it is larger than" in problem


def test_a_readers_problem_takes_the_place_of_its_path_and_everything_else_stays() -> None:
    def refuse(path: str) -> dict[str, object]:
        raise FileProblem(f"{path} is no good")

    def never(path: str) -> dict[str, object]:
        raise AssertionError("a key that is not a path is not read")

    data = {"a_file": "/x", "b_file": 5, "c_file": "", "other": 1}
    out = secrets_from_files(data, {"a_file": refuse, "b_file": never, "c_file": never})
    assert isinstance(out["a_file"], FileProblem) and str(out["a_file"]) == "/x is no good"
    assert (out["b_file"], out["c_file"], out["other"]) == (5, "", 1)
    assert data["a_file"] == "/x"  # the input is not changed


def test_what_a_reader_returns_is_added_to_the_section() -> None:
    out = secrets_from_files({"key_file": "/k"}, {"key_file": lambda path: {"key": path.upper()}})
    assert out == {"key_file": "/k", "key": "/K"}
