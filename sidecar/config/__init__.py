"""The configuration: one YAML file plus ``SIDECAR_<SECTION>__<KEY>`` environment overrides.

This is the only package that reads config files, secret files and the environment. :func:`load_config` returns
a frozen, fully validated :class:`Config` or raises one :class:`~sidecar.errors.ConfigError` listing every
problem, each naming its key path (``routes[1].prefix: must start with "/"``) and, for an environment override,
the variable. :func:`redacted` renders the effective config for ``config check`` with secrets hidden.

- ``models/``: one module per section; validators call the core's rules (key ids and secret lengths of
  ``core.tokens``, roles and session timeouts of ``core.session``, claims, ttl and key ids of ``core.assertion``).
- ``files.py``: secrets from files, every file read bounded and regular.
- ``loading.py``: the YAML file, the environment, and the problem messages.
- ``redaction.py``: ``config check``'s view.
"""

from __future__ import annotations

from sidecar.config.files import MAX_CONFIG_BYTES, MAX_SECRET_FILE_BYTES
from sidecar.config.loading import CONFIG_ENV, ENV_PREFIX, load_config
from sidecar.config.models.api import ApiConfig
from sidecar.config.models.assertion import ASSERTION_CLAIMS, MAX_ASSERTION_TTL, AssertionConfig, AssertionKey
from sidecar.config.models.headers import HeadersConfig
from sidecar.config.models.listen import FORWARD_AUTH_PROXIES, ForwardAuthConfig, ListenConfig
from sidecar.config.models.log import LogConfig
from sidecar.config.models.root import Config
from sidecar.config.models.routes import MAX_ROUTES, DenyConfig, RouteConfig
from sidecar.config.models.session import CookieConfig, SessionConfig, SigningKey, TokenConfig
from sidecar.config.models.store import CacheConfig, RedisConfig
from sidecar.config.redaction import redacted

__all__ = [
    "ASSERTION_CLAIMS",
    "CONFIG_ENV",
    "ENV_PREFIX",
    "FORWARD_AUTH_PROXIES",
    "MAX_ASSERTION_TTL",
    "MAX_CONFIG_BYTES",
    "MAX_ROUTES",
    "MAX_SECRET_FILE_BYTES",
    "ApiConfig",
    "AssertionConfig",
    "AssertionKey",
    "CacheConfig",
    "Config",
    "CookieConfig",
    "DenyConfig",
    "ForwardAuthConfig",
    "HeadersConfig",
    "ListenConfig",
    "LogConfig",
    "RedisConfig",
    "RouteConfig",
    "SessionConfig",
    "SigningKey",
    "TokenConfig",
    "load_config",
    "redacted",
]
