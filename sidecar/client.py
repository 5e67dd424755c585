"""Python clients of the SessionService API, for login services: ``SessionClient`` (sync) and ``AsyncSessionClient``.

::

    from sidecar.client import SessionClient

    with SessionClient("sidecar:9191", token=open("/run/secrets/sidecar-api").read().strip()) as sessions:
        issued = sessions.create("alice", email="alice@example.com", roles=("dev",))
        response.headers["Set-Cookie"] = issued.set_cookie        # never log issued.token
        ...
        issued = sessions.rotate(issued.token, roles=("dev", "admin"))   # after a privilege change

Errors become the sidecar exception tree: INVALID_ARGUMENT → ``BadInput``, UNAUTHENTICATED → ``ApiAuthError``,
UNAVAILABLE → ``StoreUnavailable``, DEADLINE_EXCEEDED → ``StoreTimeout`` (for a call that changes sessions its
message says the outcome is unknown), DATA_LOSS → ``CorruptRecord``, anything else → ``RuntimeFailure``. ``get``
and ``rotate`` return None when the token has no live session.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import grpc
from google.protobuf import duration_pb2

from sidecar.api.v1 import session_pb2, session_pb2_grpc
from sidecar.core.session import KEEP
from sidecar.core.set_cookie import set_cookie_header as _set_cookie_header
from sidecar.errors import (
    ApiAuthError,
    BadInput,
    CorruptRecord,
    RuntimeFailure,
    SidecarError,
    StoreTimeout,
    StoreUnavailable,
)

__all__ = [
    "KEEP",
    "AsyncSessionClient",
    "IssuedSession",
    "SessionClient",
    "SessionInfo",
    "error_from_status",
    "set_cookie_header",
]

DEFAULT_TIMEOUT = 2.0
DurationLike = float | timedelta


def set_cookie_header(name: str, token: str, max_age: float) -> str:
    """A Set-Cookie header value for ``token``: ``Secure; HttpOnly; SameSite=Lax; Path=/`` with ``Max-Age``.

    The API already returns one (``IssuedSession.set_cookie``, named after the sidecar's ``cookie.name``); use this
    only to build it yourself. Prefer a ``__Host-`` cookie name (``__Host-session``, with ``cookie.name`` set to the
    same): browsers then accept the cookie only from a secure origin, with ``Path=/`` and no ``Domain``, so a
    sibling subdomain cannot plant or overwrite it (session fixation).
    """
    return _set_cookie_header(name, token, max_age)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as the API shows it; never the token. Times are timezone-aware UTC datetimes."""

    session_id: str
    user_id: str
    email: str | None
    roles: tuple[str, ...]
    attributes: Mapping[str, str]
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A new token (from create or rotate): hand ``set_cookie`` to the browser; never log ``token``."""

    token: str
    set_cookie: str
    session: SessionInfo

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"IssuedSession(token=<redacted>, session={self.session!r})"


# --- translation (pure) ------------------------------------------------------------------------------------


def session_info(message: session_pb2.Session) -> SessionInfo:
    return SessionInfo(
        session_id=message.session_id,
        user_id=message.user_id,
        email=message.email if message.HasField("email") else None,
        roles=tuple(message.roles),
        attributes=dict(message.attributes),
        created_at=message.created_at.ToDatetime(tzinfo=UTC),
        last_seen_at=message.last_seen_at.ToDatetime(tzinfo=UTC),
        expires_at=message.expires_at.ToDatetime(tzinfo=UTC),
    )


def issued_session(message: session_pb2.CreateResponse | session_pb2.RotateResponse) -> IssuedSession:
    return IssuedSession(token=message.token, set_cookie=message.set_cookie, session=session_info(message.session))


def duration_message(name: str, value: DurationLike) -> duration_pb2.Duration:
    """A Duration from seconds or a timedelta; positivity is the sidecar's to check (it answers BadInput)."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
        raise BadInput(f"{name}: must be a finite number of seconds or a timedelta")
    message = duration_pb2.Duration()
    try:
        message.FromNanoseconds(round(seconds * 1_000_000_000))
    except (ValueError, OverflowError):
        raise BadInput(f"{name}: out of range") from None
    return message


def create_request(
    user_id: str,
    *,
    email: str | None,
    roles: tuple[str, ...] | list[str],
    attributes: Mapping[str, str] | None,
    idle_timeout: DurationLike | None,
    absolute_timeout: DurationLike | None,
) -> session_pb2.CreateRequest:
    request = session_pb2.CreateRequest(user_id=user_id, roles=list(roles), attributes=dict(attributes or {}))
    if email is not None:
        request.email = email
    if idle_timeout is not None:
        request.idle_timeout.CopyFrom(duration_message("idle_timeout", idle_timeout))
    if absolute_timeout is not None:
        request.absolute_timeout.CopyFrom(duration_message("absolute_timeout", absolute_timeout))
    return request


def rotate_request(token: str, *, email: Any, roles: Any, attributes: Any) -> session_pb2.RotateRequest:
    """KEEP leaves a part as it is; ``email=None`` removes the email, ``roles=()`` removes every role."""
    request = session_pb2.RotateRequest(token=token)
    if email is not KEEP:
        request.email = "" if email is None else email
    if roles is not KEEP:
        request.roles.CopyFrom(session_pb2.Roles(values=list(roles)))
    if attributes is not KEEP:
        request.attributes.CopyFrom(session_pb2.Attributes(values=dict(attributes)))
    return request


# Calls that change sessions: when one times out, the sidecar may have done it all the same.
WRITES = frozenset({"Create", "Rotate", "Revoke", "RevokeSession", "RevokeUser"})


def error_from_status(code: grpc.StatusCode | None, details: str | None, method: str | None = None) -> SidecarError:
    """The sidecar exception for a failed SessionService call (``method``: its name, when known)."""
    message = details or (code.name if code is not None else "unknown error")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and method in WRITES:
        return StoreTimeout(
            f"SessionService did not answer {method} in time: {message}; outcome unknown: it may or may not have "
            "taken effect (a Create may have left a session nobody holds a token for, which expires unused)"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadInput(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ApiAuthError(f"SessionService refused the API token: {message}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return StoreUnavailable(message)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return StoreTimeout(f"SessionService did not answer in time: {message}")
    if code == grpc.StatusCode.DATA_LOSS:
        return CorruptRecord(message)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return RuntimeFailure(f"SessionService is not served there (is api.enabled true?): {message}")
    name = code.name if code is not None else "UNKNOWN"
    return RuntimeFailure(f"SessionService call failed ({name}): {message}")


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str | None]:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = exc.details() if callable(getattr(exc, "details", None)) else None
    return code, details


def _metadata(token: str) -> tuple[tuple[str, str], ...]:
    if not token or token != token.strip() or not token.isprintable():
        raise BadInput("token: the API bearer token must be non-empty printable text without surrounding spaces")
    return (("authorization", f"Bearer {token}"),)


# --- the clients -------------------------------------------------------------------------------------------


class SessionClient:
    """Blocking client of the SessionService API (a grpc channel; close it, or use ``with``)."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._metadata = _metadata(token)
        self._timeout = timeout
        self._channel = (
            grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
        )
        self._stub: Any = session_pb2_grpc.SessionServiceStub(self._channel)

    def _call(self, method: str, request: Any, *, none_when_not_found: bool = False) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            code, details = _status(exc)
            if none_when_not_found and code == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_from_status(code, details, method) from None

    def create(
        self,
        user_id: str,
        *,
        email: str | None = None,
        roles: tuple[str, ...] | list[str] = (),
        attributes: Mapping[str, str] | None = None,
        idle_timeout: DurationLike | None = None,
        absolute_timeout: DurationLike | None = None,
    ) -> IssuedSession:
        """A new session for ``user_id``; unset timeouts take the sidecar's configured defaults."""
        request = create_request(
            user_id,
            email=email,
            roles=roles,
            attributes=attributes,
            idle_timeout=idle_timeout,
            absolute_timeout=absolute_timeout,
        )
        return issued_session(self._call("Create", request))

    def get(self, token: str) -> SessionInfo | None:
        """The live session of ``token``, or None."""
        response = self._call("Get", session_pb2.GetRequest(token=token), none_when_not_found=True)
        return None if response is None else session_info(response.session)

    def rotate(
        self,
        token: str,
        *,
        email: str | None = KEEP,
        roles: tuple[str, ...] | list[str] = KEEP,
        attributes: Mapping[str, str] = KEEP,
    ) -> IssuedSession | None:
        """A new token for the session of ``token`` (dead from now on); None when it has no live session.

        Call it after login and after every privilege change. Unchanged parts are kept (``KEEP``); ``email=None``
        removes the email, ``roles=()`` every role.
        """
        request = rotate_request(token, email=email, roles=roles, attributes=attributes)
        response = self._call("Rotate", request, none_when_not_found=True)
        return None if response is None else issued_session(response)

    def revoke(self, token: str) -> bool:
        """Revoke the session of ``token`` (logout); True when one existed."""
        return bool(self._call("Revoke", session_pb2.RevokeRequest(token=token)).revoked)

    def revoke_session(self, user_id: str, session_id: str) -> bool:
        """Revoke one of the user's sessions by its non-secret handle; True when one existed."""
        request = session_pb2.RevokeSessionRequest(user_id=user_id, session_id=session_id)
        return bool(self._call("RevokeSession", request).revoked)

    def revoke_user(self, user_id: str) -> int:
        """Revoke every session of ``user_id``; how many there were."""
        return int(self._call("RevokeUser", session_pb2.RevokeUserRequest(user_id=user_id)).revoked)

    def list_user(self, user_id: str) -> list[SessionInfo]:
        """The user's live sessions, oldest first (never tokens)."""
        response = self._call("ListUser", session_pb2.ListUserRequest(user_id=user_id))
        return [session_info(message) for message in response.sessions]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncSessionClient:
    """asyncio client of the SessionService API (a grpc.aio channel; ``await close()``, or ``async with``)."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._metadata = _metadata(token)
        self._timeout = timeout
        self._channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        self._stub: Any = session_pb2_grpc.SessionServiceStub(self._channel)

    async def _call(self, method: str, request: Any, *, none_when_not_found: bool = False) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            code, details = _status(exc)
            if none_when_not_found and code == grpc.StatusCode.NOT_FOUND:
                return None
            raise error_from_status(code, details, method) from None

    async def create(
        self,
        user_id: str,
        *,
        email: str | None = None,
        roles: tuple[str, ...] | list[str] = (),
        attributes: Mapping[str, str] | None = None,
        idle_timeout: DurationLike | None = None,
        absolute_timeout: DurationLike | None = None,
    ) -> IssuedSession:
        """A new session for ``user_id``; unset timeouts take the sidecar's configured defaults."""
        request = create_request(
            user_id,
            email=email,
            roles=roles,
            attributes=attributes,
            idle_timeout=idle_timeout,
            absolute_timeout=absolute_timeout,
        )
        return issued_session(await self._call("Create", request))

    async def get(self, token: str) -> SessionInfo | None:
        """The live session of ``token``, or None."""
        response = await self._call("Get", session_pb2.GetRequest(token=token), none_when_not_found=True)
        return None if response is None else session_info(response.session)

    async def rotate(
        self,
        token: str,
        *,
        email: str | None = KEEP,
        roles: tuple[str, ...] | list[str] = KEEP,
        attributes: Mapping[str, str] = KEEP,
    ) -> IssuedSession | None:
        """A new token for the session of ``token`` (dead from now on); None when it has no live session."""
        request = rotate_request(token, email=email, roles=roles, attributes=attributes)
        response = await self._call("Rotate", request, none_when_not_found=True)
        return None if response is None else issued_session(response)

    async def revoke(self, token: str) -> bool:
        """Revoke the session of ``token`` (logout); True when one existed."""
        return bool((await self._call("Revoke", session_pb2.RevokeRequest(token=token))).revoked)

    async def revoke_session(self, user_id: str, session_id: str) -> bool:
        """Revoke one of the user's sessions by its non-secret handle; True when one existed."""
        request = session_pb2.RevokeSessionRequest(user_id=user_id, session_id=session_id)
        return bool((await self._call("RevokeSession", request)).revoked)

    async def revoke_user(self, user_id: str) -> int:
        """Revoke every session of ``user_id``; how many there were."""
        return int((await self._call("RevokeUser", session_pb2.RevokeUserRequest(user_id=user_id))).revoked)

    async def list_user(self, user_id: str) -> list[SessionInfo]:
        """The user's live sessions, oldest first (never tokens)."""
        response = await self._call("ListUser", session_pb2.ListUserRequest(user_id=user_id))
        return [session_info(message) for message in response.sessions]

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
