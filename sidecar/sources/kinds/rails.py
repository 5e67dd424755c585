"""Rails (and Rack) sessions in Redis through redis-actionpack / redis-rack (``ActionDispatch::Session::RedisStore``).

The cookie (``_session_id`` unless the app names it: ``session_store :redis_store, key: ...``) holds the public
session id, 32 hex characters; Rack 2.2 and later store the session under its private id, ``2::`` and the SHA-256
of the public id, after redis-store's namespace (``rack:session:`` by default), for the key's TTL
(``expire_after``). The value is what redis-store's serializer wrote: configure ``serializer: JSON`` in the app and
``serializer: json`` here; Ruby Marshal (redis-store's default) is read only as far as ``formats.marshal`` allows.
A cookie the app signs or encrypts (the ``signed`` option) is not read.
"""

from __future__ import annotations

import hashlib
import re

from sidecar.sources.formats import json, marshal
from sidecar.sources.framework import Defaults, Kind, Settings
from sidecar.sources.paths import Paths

DEFAULTS = Defaults(
    cookie="_session_id",
    key_prefix="rack:session:",
    serializers=("json", "marshal"),
    signed="never",
    paths=Paths("user_id"),
)
_PUBLIC_ID = re.compile(r"[0-9a-f]{32}")


def session_id(value: str) -> str | None:
    return value if _PUBLIC_ID.fullmatch(value) else None


def private_id(public_id: str) -> str:
    """Rack's ``SessionId#private_id``: what the store names the session by (the cookie's value is not a key)."""
    return "2::" + hashlib.sha256(public_id.encode("ascii")).hexdigest()


def kind(settings: Settings) -> Kind:
    return Kind(
        name="rails",
        session_id=session_id,
        store_key=lambda sid: settings.key_prefix + private_id(sid),
        decode=marshal.loads if settings.serializer == "marshal" else json.loads_object,
        paths=settings.paths,
    )
