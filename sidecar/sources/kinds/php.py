"""PHP sessions in Redis through phpredis's session handler (``session.save_handler = redis``).

The ``PHPSESSID`` cookie is the session id (PHP's alphabet: ``[a-zA-Z0-9,-]``, 22 to 256 characters); the session
is ``PHPREDIS_SESSION:<id>``, written with ``session.serialize_handler`` (``php``, the default, or
``php_serialize``), kept for ``session.gc_maxlifetime`` (the key's TTL, refreshed on each request PHP serves).
Only scalars and arrays are read (``formats.php``): objects and references are refused, never unserialized.
"""

from __future__ import annotations

import re
from typing import Literal

from sidecar.sources.formats import php
from sidecar.sources.framework import Defaults, Kind, Settings
from sidecar.sources.paths import Paths

DEFAULTS = Defaults(
    cookie="PHPSESSID",
    key_prefix="PHPREDIS_SESSION:",
    serializers=("php", "php_serialize"),
    signed="never",
    paths=Paths("user_id"),
)
_ID = re.compile(r"[a-zA-Z0-9,-]{22,256}")


def session_id(value: str) -> str | None:
    return value if _ID.fullmatch(value) else None


def kind(settings: Settings) -> Kind:
    handler: Literal["php", "php_serialize"] = "php_serialize" if settings.serializer == "php_serialize" else "php"
    return Kind(
        name="php",
        session_id=session_id,
        store_key=lambda sid: settings.key_prefix + sid,
        decode=lambda data: php.loads_session(data, handler),
        paths=settings.paths,
    )
