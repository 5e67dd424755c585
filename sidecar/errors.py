"""The exception tree of session-sidecar.

Every error the product raises on purpose is a ``SidecarError``; the CLI maps the two families to exit codes
(``BadInput`` → 2, ``RuntimeFailure`` → 1) and prints one line, never a traceback.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error session-sidecar raises on purpose."""


class BadInput(SidecarError):
    """The caller gave something malformed: a CLI argument, a token, a config value."""


class ConfigError(BadInput):
    """The configuration has one or more problems; ``problems`` names each key and what is wrong."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class RuntimeFailure(SidecarError):
    """Something outside the caller's input failed (the store, the network)."""


class StoreError(RuntimeFailure):
    """The session store could not answer: unreachable, too slow, or refused the command."""


class StoreUnavailable(StoreError):
    """The session store cannot be reached or refused the command."""


class StoreTimeout(StoreError):
    """The session store did not answer within the configured deadline."""


class ApiAuthError(RuntimeFailure):
    """The SessionService API refused the caller's bearer token (missing, wrong, or the API token changed)."""


class CorruptRecord(SidecarError):
    """A stored session record does not decode to a valid session (bad JSON, types, or header-unsafe values)."""
