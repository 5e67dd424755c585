"""What the config tests share: key material and ways to load a config and read its problems."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sidecar.config import load_config
from sidecar.errors import ConfigError

SECRET_BYTES = bytes(range(32))
SECRET = base64.urlsafe_b64encode(SECRET_BYTES).decode().rstrip("=")
OTHER_BYTES = b"\xff" * 40
OTHER = base64.urlsafe_b64encode(OTHER_BYTES).decode()  # with padding
PREFIXES3 = ("x-user-", "x-session-", "x-a-")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def problems_of(path: str | None = None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return info.value.problems


def only_problem(path: str | None = None, environ: dict[str, str] | None = None) -> str:
    found = problems_of(path, environ)
    assert len(found) == 1, found
    return found[0]
