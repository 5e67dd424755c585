"""What an HTTP listener is told: the ``Handler`` that reads, decides and encodes its requests, the ``Limits`` its
connections are served under, and the ``Refusals`` it answers requests with that cannot be answered as asked.

``sidecar.authz.http`` (ext_authz, forward-auth) and ``sidecar.admin`` (health, metrics, JWKS) are the two
handlers; ``httpserver.protocol`` serves one connection with either, ``httpserver.listener`` accepts them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_bytes: int  # request line + headers + body of one request
    max_header_lines: int
    request_timeout: float  # a request begun must be complete within this
    idle_timeout: float  # listen.idle_timeout: no bytes read nor answer written for this long closes the connection
    max_connections: int  # listen.max_connections (the listener lowers it to its descriptor share when it starts)
    keep_alive: bool = True  # False: one request per connection, and request_timeout runs from its start


@dataclass(frozen=True, slots=True)
class Refusals:
    """The handler's answers to requests that cannot be answered as asked; each closes the connection (an empty
    one closes it without a word)."""

    bad_request: bytes  # malformed (an unknown method token included), or Upgrade / CONNECT
    too_large: bytes  # the head is over max_request_bytes or max_header_lines
    body_too_large: bytes
    unanswerable: bytes  # the handler failed (a bug): never a traceback to the client


Q = TypeVar("Q")  # a request as the handler reads it
W = TypeVar("W")  # what the handler begun and must finish with I/O
A = TypeVar("A")  # what the handler answers, before it is encoded


@dataclass(frozen=True, slots=True)
class Handler(Generic[Q, W, A]):
    """What a listener does with a request: four functions the protocol calls directly (no method of a handler
    object in between: ``begin`` may be the service's own). ``read`` once per request, ``begin`` in its turn,
    ``finish`` when ``begin`` returned a ``waits``, ``encode`` when the answer can be written."""

    # The request from its parts as parsed: method, target, (lower-case name, value) of each header line, in
    # order, and the peer's address. Values are text with surrogate escapes: bytes that are not UTF-8 (obs-text, a
    # Cookie can carry them) are sent back unchanged when an answer carries them.
    read: Callable[[bytes, bytes, list[tuple[str, str]], str], Q]
    begin: Callable[[Q], A | W]  # the answer when it needs no I/O, else the work to finish
    finish: Callable[[W], Awaitable[A]]
    # The response bytes of (request, target, answer, close: the connection closes after it, head: it was HEAD).
    encode: Callable[[Q, bytes, A, bool, bool], bytes]
    waits: type[W]
    refusals: Refusals
    # Header names as clients spell them → lower case, for the names the handler reads: those cost no decoding.
    header_names: Mapping[bytes, str] = field(default_factory=dict)


class Connection(Protocol):
    """A connection, as its listener sees it."""

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


class Connections(Protocol):
    """The listener, as a connection sees it."""

    @property
    def limits(self) -> Limits: ...

    @property
    def log(self) -> logging.Logger: ...

    @property
    def name(self) -> str: ...  # the listener's config key, for log lines

    def opened(self, connection: Connection) -> bool: ...

    def closed(self, connection: Connection) -> None: ...
