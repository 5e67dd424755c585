"""Django's ``cache`` and ``cached_db`` session engines on a Redis cache (Django's RedisCache, or django-redis).

The ``sessionid`` cookie is the session key itself: 32 characters of ``[a-z0-9]``. The cache keeps the session
dict pickled under ``:<version>:<KEY_PREFIX><engine prefix><key>``, by default
``:1:django.contrib.sessions.cache<key>`` (``cached_db``: ``...sessions.cached_db<key>``; give that as
key_prefix), for the key's TTL (SESSION_COOKIE_AGE). The pickle is read by a reader that refuses every global
(``formats.pickle``): it can hold only plain data, and a session dict is plain data.

Django checks ``_auth_user_hash`` (an HMAC of the user's password hash) against its database on each request, so a
password change ends the user's other sessions there. The sidecar has no access to that database: a session
stays valid here until the application deletes it or it expires (README, "Migrating from an existing session
store").
"""

from __future__ import annotations

import re

from sidecar.sources.formats import pickle
from sidecar.sources.framework import Defaults, Kind, Settings
from sidecar.sources.paths import Paths

DEFAULTS = Defaults(
    cookie="sessionid",
    key_prefix=":1:django.contrib.sessions.cache",
    serializers=(),
    signed="never",
    paths=Paths("_auth_user_id"),
)
_KEY = re.compile(r"[a-z0-9]{32}")


def session_id(value: str) -> str | None:
    return value if _KEY.fullmatch(value) else None


def kind(settings: Settings) -> Kind:
    return Kind(
        name="django",
        session_id=session_id,
        store_key=lambda key: settings.key_prefix + key,
        decode=_session_dict,
        paths=settings.paths,
    )


def _session_dict(data: bytes) -> object:
    return pickle.loads(data)
