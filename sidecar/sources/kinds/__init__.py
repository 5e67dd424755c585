"""The session kinds a ``sources`` entry names, each with its framework's defaults.

``native`` is this sidecar's own sessions (``sources.native``), ``spring-session`` reads a hash per session
(``sources.spring``); the others keep one key per session and share ``sources.framework``: each module here says
how its framework names, signs and encodes a session. Adding a framework of that shape is a module here, one line
below, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.sources.framework import Defaults, Kind, Settings
from sidecar.sources.kinds import django, express, flask, php, rails
from sidecar.sources.paths import Paths

NATIVE = "native"
SPRING = "spring-session"
SPRING_DEFAULTS = Defaults(
    cookie="SESSION",
    key_prefix="spring:session:",
    serializers=("jdk", "json"),
    signed="never",
    paths=Paths(""),  # "": Spring's own rule (the authenticated principal's name and authorities)
)

# One key per session: the kind's defaults and how its Kind is built from a configured entry.
FRAMEWORKS: dict[str, tuple[Defaults, Callable[[Settings], Kind]]] = {
    "express": (express.DEFAULTS, express.kind),
    "django": (django.DEFAULTS, django.kind),
    "flask": (flask.DEFAULTS, flask.kind),
    "php": (php.DEFAULTS, php.kind),
    "rails": (rails.DEFAULTS, rails.kind),
}
KINDS = (NATIVE, SPRING, *FRAMEWORKS)


def defaults(kind: str) -> Defaults | None:
    """A kind's defaults; None for ``native`` (its cookie and keys are the top-level config's)."""
    if kind == SPRING:
        return SPRING_DEFAULTS
    entry = FRAMEWORKS.get(kind)
    return entry[0] if entry is not None else None
