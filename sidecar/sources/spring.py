"""Spring Session Data Redis: both ``RedisSessionRepository`` and ``RedisIndexedSessionRepository``.

The ``SESSION`` cookie is the session id (a UUID), base64-encoded by Spring's DefaultCookieSerializer unless the
app turned that off (both are read). The session is the hash ``<namespace>:sessions:<id>`` (``key_prefix`` is the
namespace and its colon, ``spring:session:``); only the five fields a decision needs are read (``FIELDS``: the
times, the security context and Spring Security's "expired" mark), measured before they are fetched. The expiry
is Spring's own: ``lastAccessedTime + maxInactiveInterval``, never when the interval is negative; not the key's
TTL, which the indexed repository sets five minutes later than the expiry.

The identity is Spring Security's: the context's authentication must be there, not anonymous and
``authenticated``; the user is its name and its authorities are the roles (``formats.spring``). Each of the
``user_id``, ``email`` and ``roles`` paths, when configured, reads the security context's tree instead of Spring's
own value, once Spring's rules found an authenticated user in it.

The sidecar does not touch Spring sessions (it writes nothing to the application's Redis): a user active only on
the services behind the mesh is logged out after ``maxInactiveInterval``, as if idle (README, "Migrating from an
existing session store").
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from typing import Literal

from sidecar.sources.formats import spring
from sidecar.sources.framework import NO_EXPIRY_SECONDS, FrameworkKey, Settings, UncachedSource, handle
from sidecar.sources.paths import (
    Identity,
    Paths,
    checked_email,
    checked_roles,
    email_at,
    lookup,
    roles_at,
    user_text,
)
from sidecar.sources.redis_reader import RedisReader

CONTEXT_ATTRIBUTE = "SPRING_SECURITY_CONTEXT"
CONTEXT_MEMO_ENTRIES = 4096
CONTEXT_MEMO_MAX_BYTES = 4096  # a typical context is 1-2 KiB; the memo holds at most 16 MiB of keys
# Spring Security's concurrent-session control (maximumSessions with SpringSessionBackedSessionRegistry) marks a
# session it pushed out with this attribute instead of deleting it: such a session is over.
EXPIRED_ATTRIBUTE = "org.springframework.session.security.SpringSessionBackedSessionInformation.EXPIRED"
FIELDS = (
    "creationTime",
    "lastAccessedTime",
    "maxInactiveInterval",
    f"sessionAttr:{EXPIRED_ATTRIBUTE}",
    f"sessionAttr:{CONTEXT_ATTRIBUTE}",
)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BASE64_UUID_LENGTH = 48


def session_id(value: str) -> str | None:
    """The session id in a SESSION cookie value: a UUID, as such or base64-encoded; else None."""
    if _UUID.fullmatch(value):
        return value
    if len(value) != _BASE64_UUID_LENGTH:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded if _UUID.fullmatch(decoded) else None


def spring_identity(context: object) -> Identity | None:
    """Spring Security's identity of a security context, held to the core's header rules."""
    found = spring.identity(context)
    if found is None:
        return None
    user_id = user_text(found.name, "the principal's name")
    email = checked_email(found.email, "the principal's email")
    return Identity(user_id, email, checked_roles(list(found.authorities), "the authorities"))


def with_paths(found: Identity, context: object, paths: Paths) -> Identity | None:
    """Spring's identity with each configured path read from the context instead of Spring's own value (each on
    its own: a configured ``email`` alone keeps Spring's name and authorities)."""
    user_id = found.user_id
    if paths.user_id:
        user = lookup(context, paths.user_id)
        if user is None or user == "":
            return None
        user_id = user_text(user, f"the user id at {paths.user_id!r}")
    email = email_at(context, paths.email) if paths.email else found.email
    roles = roles_at(context, paths.roles) if paths.roles else found.roles
    return Identity(user_id, email, roles)


class SpringSessionSource(UncachedSource):
    name = "spring-session"

    def __init__(self, settings: Settings, reader: RedisReader) -> None:
        self._settings = settings
        self._reader = reader
        self._sessions = f"{settings.key_prefix}sessions:"
        self._serializer: Literal["jdk", "json"] = "json" if settings.serializer == "json" else "jdk"
        self.cookie_names = (settings.cookie,)
        # A session's security context is the same bytes on every request (Spring rewrites only the times), and
        # reading a JDK stream is most of a Spring Check's cost: the identity of recently seen contexts is kept,
        # keyed by their exact bytes (a changed byte is read anew). Refusals are not kept.
        self._identity_of = functools.lru_cache(maxsize=CONTEXT_MEMO_ENTRIES)(self._read_identity)

    def _read_identity(self, raw: bytes) -> Identity | None:
        """The identity in a security context attribute's bytes (Spring's rules, then the configured paths)."""
        context = None if raw == b"" else spring.read_context(raw, self._serializer)
        found = spring_identity(context)
        return None if found is None else with_paths(found, context, self._settings.paths)

    def context_identity(self, raw: bytes | None) -> Identity | None:
        if raw is None:
            return None
        if len(raw) > CONTEXT_MEMO_MAX_BYTES:
            return self._read_identity(raw)
        return self._identity_of(raw)

    def _candidate(self, value: str) -> FrameworkKey | None:
        sid = session_id(value)
        return None if sid is None else FrameworkKey("", handle(self.name, sid), self._sessions + sid)

    async def _resolve(self, key: FrameworkKey, now: float) -> tuple[Identity, float] | None:
        values = await self._reader.hash_fields(key.store_key, FIELDS)
        if values is None:
            return None
        *times, expired, context = values
        fields = {name.encode(): value for name, value in zip(FIELDS, times, strict=False) if value is not None}
        expires_ms = spring.expires_at_ms(spring.read_session(fields, self._serializer))
        if expires_ms is not None and expires_ms <= now * 1000:
            return None
        if expired and spring.read_context(expired, self._serializer) is not False:
            return None  # marked expired by Spring Security (or marked with anything but false: not read as live)
        # Spring's rules first, whatever the paths: an anonymous or unauthenticated context is no identity.
        found = self.context_identity(context)
        if found is None:
            return None  # no authenticated user in the session
        return found, NO_EXPIRY_SECONDS if expires_ms is None else expires_ms / 1000 - now
