"""api: the SessionService API token, read from its file only."""

from __future__ import annotations

from pathlib import Path

import yaml

from sidecar.config import load_config, redacted
from tests.unit.config.support import only_problem


def test_api_enabled_needs_a_readable_token_file(tmp_path: Path) -> None:
    assert "api.token_file" in only_problem(environ={"SIDECAR_API__ENABLED": "true"})
    missing = tmp_path / "nope"
    assert "cannot read" in only_problem(
        environ={"SIDECAR_API__ENABLED": "true", "SIDECAR_API__TOKEN_FILE": str(missing)}
    )
    short = tmp_path / "short"
    short.write_text("tiny\n")
    assert "at least" in only_problem(environ={"SIDECAR_API__ENABLED": "true", "SIDECAR_API__TOKEN_FILE": str(short)})


def test_api_token_is_read_from_the_file_and_never_shown(tmp_path: Path) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("t" * 40 + "\n")
    config = load_config(environ={"SIDECAR_API__ENABLED": "true", "SIDECAR_API__TOKEN_FILE": str(token_file)})
    assert config.api.token == "t" * 40
    assert "t" * 40 not in yaml.safe_dump(redacted(config))
    assert "t" * 40 not in repr(config)
