"""session-sidecar: an Envoy ext_authz service that turns a session cookie into trusted identity headers.

The public surface for Python callers is small on purpose: the exception tree and the version. The service is
used through its protocols (ext_authz gRPC, the CLI), described in the README and CONTRACT.
"""

from sidecar.errors import (
    ApiAuthError,
    BadInput,
    ConfigError,
    CorruptRecord,
    RuntimeFailure,
    SidecarError,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
)

__version__ = "0.1.0"

__all__ = [
    "ApiAuthError",
    "BadInput",
    "ConfigError",
    "CorruptRecord",
    "RuntimeFailure",
    "SidecarError",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "__version__",
]
