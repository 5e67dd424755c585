"""Flask-Session's RedisSessionInterface: ``session:<sid>`` holds the session dict, kept for the key's TTL
(PERMANENT_SESSION_LIFETIME).

Flask-Session 0.6 and later write msgspec msgpack (SESSION_SERIALIZATION_FORMAT, or ``json``); earlier versions
pickled, which the msgpack reader reads through the pickle reader that refuses every global. The ``session``
cookie is the sid (``secrets.token_urlsafe``); with SESSION_USE_SIGNER it is ``<sid>.<sig>``, itsdangerous's
HMAC-SHA1 signature under the app's SECRET_KEY with the salt ``flask-session``: give ``secrets_file`` and every
cookie is verified before any lookup (an unsigned one is then refused).
"""

from __future__ import annotations

import re

from itsdangerous import BadSignature, Signer

from sidecar.sources.formats import json, msgpack
from sidecar.sources.framework import Defaults, Kind, Settings
from sidecar.sources.paths import Paths

DEFAULTS = Defaults(
    cookie="session", key_prefix="session:", serializers=("msgpack", "json"), signed="optional", paths=Paths("_user_id")
)
SALT = "flask-session"
_SID = re.compile(r"[A-Za-z0-9_-]{16,128}")


def unsigned(value: str) -> str | None:
    return value if _SID.fullmatch(value) else None


def signed(value: str, signers: tuple[Signer, ...]) -> str | None:
    if len(value) > 256:
        return None
    for signer in signers:
        try:
            sid = signer.unsign(value).decode("ascii")
        except (BadSignature, UnicodeDecodeError):
            continue
        return unsigned(sid)
    return None


def kind(settings: Settings) -> Kind:
    signers = tuple(Signer(secret, salt=SALT, key_derivation="hmac") for secret in settings.secrets)
    return Kind(
        name="flask",
        session_id=(lambda value: signed(value, signers)) if signers else unsigned,
        store_key=lambda sid: settings.key_prefix + sid,
        decode=json.loads_object if settings.serializer == "json" else msgpack.loads,
        paths=settings.paths,
    )
