"""What an HTTP listener is told: the ``Handler`` that reads, decides and encodes its requests, the ``Limits`` its
connections are served under, and the ``Refusals`` it answers requests with that cannot be answered as asked.

``sidecar.authz.http`` (ext_authz, forward-auth) and ``sidecar.admin`` (health, metrics, JWKS) are the two
handlers; ``http_protocol`` serves one connection with either, ``http_listener`` accepts them.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
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


class Handler(abc.ABC, Generic[Q, W, A]):
    """What a listener does with a request; the protocol calls ``read`` once per request, ``begin`` in its turn,
    ``finish`` when ``begin`` returned a ``waits``, and ``encode`` when the answer can be written."""

    waits: type[W]
    refusals: Refusals

    @abc.abstractmethod
    def read(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], peer: str) -> Q:
        """The request, from its parts as parsed (``headers``: raw name and value of each line, in order)."""

    @abc.abstractmethod
    def begin(self, request: Q) -> A | W:
        """The answer when it needs no I/O, else the work to ``finish``."""

    @abc.abstractmethod
    async def finish(self, work: W) -> A:
        """The answer of work ``begin`` could not complete."""

    @abc.abstractmethod
    def encode(self, request: Q, target: bytes, answer: A, close: bool, head: bool) -> bytes:
        """The response bytes (``close``: the connection closes after it; ``head``: the request was HEAD)."""


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
