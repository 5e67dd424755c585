"""api: the SessionService API, off unless enabled, and then only for callers holding the bearer token."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from sidecar.config.files import FilePath, FileProblem, read_text, secrets_from_files
from sidecar.config.models.base import Problems, Secret, Section, raw_flag

MIN_API_TOKEN_CHARS = 24


def _token(path: str) -> dict[str, Any]:
    token = read_text(path)
    if len(token) < MIN_API_TOKEN_CHARS or any(ch.isspace() or not ch.isprintable() for ch in token):
        raise FileProblem(f"must hold one token of at least {MIN_API_TOKEN_CHARS} printable characters")
    return {"token": token}


class ApiConfig(Section):
    """The SessionService API on the gRPC listener: off unless enabled, and then only for bearer-token callers."""

    enabled: bool = False
    token_file: FilePath = ""
    # Read from token_file at load time; never printed.
    token: Secret = Field(default="", repr=False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _token_only_from_its_file(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        # A token written in the config would sit in a ConfigMap and in `config check` error paths: files only.
        if "token" in data:
            raise Problems([(("token",), "unknown key (the token is read from api.token_file)")])
        if not raw_flag(data, "enabled"):
            return data
        if not data.get("token_file"):
            raise Problems(
                [(("token_file",), "is required when api.enabled is true (a file holding the bearer token)")]
            )
        return secrets_from_files(data, {"token_file": _token})
