"""Where a framework's session keeps the user: dotted paths into the decoded session, and the identity they name.

A path is dot-separated names (``passport.user``, ``warden.user.user.key.0.0``): a name picks a map's key, a number
picks a list's item. Frameworks use keys that hold dots themselves (Devise's ``warden.user.user.key``), so at each
level the longest run of names that is a key of the map wins; the search is bounded by the path's length squared
(at most ``MAX_SEGMENTS`` names), whatever the session holds.

``identity`` turns what the paths name into the sidecar's identity, or says why it cannot (a session without a
user is no identity: anonymous sessions are common; a user id that is not text or an integer, or values that fail
the core's header rules, are a refused record).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.core.session import MAX_ROLES, header_value_problem, role_problem, shown
from sidecar.errors import CorruptRecord

MAX_SEGMENTS = 16
MAX_SEGMENT_LENGTH = 128
_SEGMENT = re.compile(r"[^.\s]+")
_ROLE_SEPARATORS = re.compile(r"[,\s]+")


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a value in a session (the config reports it at the key), or None."""
    if not path:
        return "is empty"
    segments = path.split(".")
    if len(segments) > MAX_SEGMENTS:
        return f"has more than {MAX_SEGMENTS} parts"
    for segment in segments:
        if not segment:
            return f"{shown(path)} has an empty part (two dots, or a dot at an end)"
        if len(segment) > MAX_SEGMENT_LENGTH:
            return f"has a part longer than {MAX_SEGMENT_LENGTH} characters"
        if _SEGMENT.fullmatch(segment) is None:
            return f"{shown(path)} has whitespace in a part"
    return None


_MISSING = object()


def lookup(data: object, path: str) -> object | None:
    """The value ``path`` names in ``data``, or None when it names nothing (or null)."""
    found = _walk(data, tuple(path.split(".")))
    return None if found is _MISSING else found


def _walk(data: object, segments: tuple[str, ...]) -> object:
    if not segments:
        return data
    if isinstance(data, Mapping):
        # Longest run first: {"warden.user.user.key": ...} is reached by the path warden.user.user.key.
        for end in range(len(segments), 0, -1):
            name = ".".join(segments[:end])
            if name in data:
                return _walk(data[name], segments[end:])
            if _is_index(name) and int(name) in data:  # PHP and pickled maps keep integer keys
                return _walk(data[int(name)], segments[end:])
        return _MISSING
    if isinstance(data, list | tuple) and _is_index(segments[0]):
        index = int(segments[0])
        return _walk(data[index], segments[1:]) if index < len(data) else _MISSING
    return _MISSING


def _is_index(name: str) -> bool:
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
    return name.isascii() and name.isdigit()


@dataclass(frozen=True, slots=True)
class Paths:
    """Where one source's sessions keep the user id, the email and the roles (None: not read)."""

    user_id: str
    email: str | None = None
    roles: str | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    email: str | None
    roles: tuple[str, ...]


def identity(session: object, paths: Paths) -> Identity | None:
    """The identity ``paths`` name in ``session``; None when it holds no user (not logged in). Raises
    CorruptRecord when what it holds cannot be an identity."""
    user = lookup(session, paths.user_id)
    if user is None or user == "":
        return None
    user_id = user_text(user, f"the user id at {paths.user_id!r}")
    email = email_at(session, paths.email)
    roles = roles_at(session, paths.roles)
    return Identity(user_id, email, roles)


def user_text(value: object, where: str) -> str:
    """A user id as text: frameworks keep it as a string or an integer (a database key)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CorruptRecord(f"{where} is a {type(value).__name__}, not text or an integer")
    text = str(value)
    if (problem := header_value_problem(text)) is not None:
        raise CorruptRecord(f"{where} {problem}")
    return text


def email_at(session: object, path: str | None) -> str | None:
    return checked_email(lookup(session, path) if path else None, f"the email at {path!r}")


def checked_email(value: object, where: str) -> str | None:
    """An email as the identity carries it: None when there is none, text held to the core's header rules."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CorruptRecord(f"{where} is a {type(value).__name__}, not text")
    if (problem := header_value_problem(value)) is not None:
        raise CorruptRecord(f"{where} {problem}")
    return value


def roles_at(session: object, path: str | None) -> tuple[str, ...]:
    value = lookup(session, path) if path else None
    if value is None:
        return ()
    items: list[object]
    if isinstance(value, str):
        items = [part for part in _ROLE_SEPARATORS.split(value) if part]
    elif isinstance(value, list | tuple):
        items = list(value[: MAX_ROLES + 1])
    else:
        raise CorruptRecord(f"the roles at {path!r} are a {type(value).__name__}, not a list or text")
    return checked_roles(items, f"the roles at {path!r}")


def checked_roles(items: list[object], where: str) -> tuple[str, ...]:
    """``items`` as roles, in order without repeats, held to the core's role rules."""
    if len(items) > MAX_ROLES:
        raise CorruptRecord(f"{where}: more than {MAX_ROLES}")
    roles: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise CorruptRecord(f"{where}: an item is a {type(item).__name__}, not text")
        if (problem := role_problem(item)) is not None:
            raise CorruptRecord(f"{where}: role {shown(item)} {problem}")
        roles.append(item)
    return tuple(dict.fromkeys(roles))
