"""The SessionService gRPC servicer: protos in, SessionManager calls, protos out. Translation only.

Validation lives in the SessionManager and the core; this module maps their answers and errors onto gRPC:
``BadInput`` → INVALID_ARGUMENT (with its message), ``StoreError`` → UNAVAILABLE, no live session → NOT_FOUND,
``CorruptRecord`` → DATA_LOSS, anything else → INTERNAL with a generic message (the exception is logged).
A request that does not deserialize (a string field that is not UTF-8, a truncated message) is INVALID_ARGUMENT:
left to grpc, the deserializer's DecodeError is an UNKNOWN status and a logged traceback.
Tokens only ever leave in CreateResponse and RotateResponse; nothing here logs one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from sidecar.api.v1 import session_pb2, session_pb2_grpc
from sidecar.core.session import KEEP, SessionRecord, expires_at
from sidecar.errors import BadInput, CorruptRecord, StoreError
from sidecar.lifecycle import IssuedSession, SessionManager

log = logging.getLogger("sidecar.api")

SERVICE_NAME = "sidecar.session.v1.SessionService"

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

_NO_SESSION = "no live session for this token"


# --- translation (pure) ------------------------------------------------------------------------------------


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """POSIX seconds as a Timestamp (microsecond precision, like the stored record)."""
    message = timestamp_pb2.Timestamp()
    message.FromMicroseconds(round(seconds * 1_000_000))
    return message


def session_message(record: SessionRecord) -> session_pb2.Session:
    """The token-free view of a session."""
    message = session_pb2.Session(
        session_id=record.session_id,
        user_id=record.user_id,
        roles=record.roles,
        attributes=dict(record.attributes),
        created_at=timestamp(record.created_at),
        last_seen_at=timestamp(record.last_seen_at),
        expires_at=timestamp(expires_at(record)),
    )
    if record.email is not None:
        message.email = record.email
    return message


def issued_fields(issued: IssuedSession) -> dict[str, Any]:
    """The fields CreateResponse and RotateResponse share."""
    return {"token": issued.token, "set_cookie": issued.set_cookie, "session": session_message(issued.record)}


def duration_seconds(message: Any, field: str) -> float | None:
    """The Duration ``field`` of ``message`` in seconds, or None when unset (the configured default applies).

    Not checked here: the SessionManager rejects a non-positive duration as bad input.
    """
    if not message.HasField(field):
        return None
    value: duration_pb2.Duration = getattr(message, field)
    return value.seconds + value.nanos / 1e9


def required(name: str, value: str) -> str:
    """proto3 has no required fields: an empty string is an absent one."""
    if not value:
        raise BadInput(f"{name}: must not be empty")
    return value


# --- the servicer ------------------------------------------------------------------------------------------


class SessionServiceServicer(session_pb2_grpc.SessionServiceServicer):  # type: ignore[misc]
    def __init__(self, manager: SessionManager) -> None:
        self._manager = manager

    async def _run(self, context: Context, method: str, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except BadInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreError as exc:
            log.warning("SessionService/%s: session store failure: %s", method, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"session store unavailable: {exc}")
        except CorruptRecord as exc:
            log.warning("SessionService/%s: %s", method, exc)
            await context.abort(grpc.StatusCode.DATA_LOSS, "a stored session is corrupt or cannot be opened")
        except Exception:
            log.exception("SessionService/%s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    async def Create(self, request: session_pb2.CreateRequest, context: Context) -> session_pb2.CreateResponse:
        async def work() -> session_pb2.CreateResponse:
            issued = await self._manager.create(
                request.user_id,
                email=request.email if request.HasField("email") else None,
                roles=tuple(request.roles),
                attributes=dict(request.attributes),
                idle_timeout=duration_seconds(request, "idle_timeout"),
                absolute_timeout=duration_seconds(request, "absolute_timeout"),
            )
            return session_pb2.CreateResponse(**issued_fields(issued))

        return await self._run(context, "Create", work)

    async def Get(self, request: session_pb2.GetRequest, context: Context) -> session_pb2.GetResponse:
        async def work() -> session_pb2.GetResponse | None:
            record = await self._manager.get(request.token)
            return None if record is None else session_pb2.GetResponse(session=session_message(record))

        response = await self._run(context, "Get", work)
        if response is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, _NO_SESSION)
        return response

    async def Rotate(self, request: session_pb2.RotateRequest, context: Context) -> session_pb2.RotateResponse:
        async def work() -> session_pb2.RotateResponse | None:
            email: str | None = KEEP
            if request.HasField("email"):
                email = request.email or None  # "" removes the email
            roles: tuple[str, ...] = tuple(request.roles.values) if request.HasField("roles") else KEEP
            attributes: dict[str, str] = dict(request.attributes.values) if request.HasField("attributes") else KEEP
            issued = await self._manager.rotate(request.token, email=email, roles=roles, attributes=attributes)
            return None if issued is None else session_pb2.RotateResponse(**issued_fields(issued))

        response = await self._run(context, "Rotate", work)
        if response is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, _NO_SESSION)
        return response

    async def Revoke(self, request: session_pb2.RevokeRequest, context: Context) -> session_pb2.RevokeResponse:
        async def work() -> session_pb2.RevokeResponse:
            return session_pb2.RevokeResponse(revoked=await self._manager.revoke(request.token))

        return await self._run(context, "Revoke", work)

    async def RevokeSession(
        self, request: session_pb2.RevokeSessionRequest, context: Context
    ) -> session_pb2.RevokeSessionResponse:
        async def work() -> session_pb2.RevokeSessionResponse:
            user_id, session_id = required("user_id", request.user_id), required("session_id", request.session_id)
            return session_pb2.RevokeSessionResponse(revoked=await self._manager.revoke_session(user_id, session_id))

        return await self._run(context, "RevokeSession", work)

    async def RevokeUser(
        self, request: session_pb2.RevokeUserRequest, context: Context
    ) -> session_pb2.RevokeUserResponse:
        async def work() -> session_pb2.RevokeUserResponse:
            user_id = required("user_id", request.user_id)
            return session_pb2.RevokeUserResponse(revoked=await self._manager.revoke_user(user_id))

        return await self._run(context, "RevokeUser", work)

    async def ListUser(self, request: session_pb2.ListUserRequest, context: Context) -> session_pb2.ListUserResponse:
        async def work() -> session_pb2.ListUserResponse:
            records = await self._manager.list(required("user_id", request.user_id))
            return session_pb2.ListUserResponse(sessions=[session_message(record) for record in records])

        return await self._run(context, "ListUser", work)


# --- registration: requests are decoded leniently, so a malformed one gets a clear INVALID_ARGUMENT ------------


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the deserializer hands the method instead of a request whose bytes do not parse."""

    type_name: str


def lenient(message_class: Any) -> Callable[[bytes], Any]:
    """``message_class.FromString`` that returns ``Undecodable`` instead of raising: grpc only logs and answers
    UNKNOWN for an exception raised while deserializing, before any servicer code runs."""
    type_name = message_class.DESCRIPTOR.name

    def deserialize(raw: bytes) -> Any:
        try:
            return message_class.FromString(raw)
        except DecodeError:
            return Undecodable(type_name)

    return deserialize


def undecodable_message(type_name: str) -> str:
    return f"the request is not a valid {type_name}: a malformed message, or a string field that is not UTF-8"


def refusing_undecodable(method: str, behaviour: Callable[[Any, Context], Awaitable[Any]]) -> Any:
    async def handle(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            log.debug("SessionService/%s: %s", method, undecodable_message(request.type_name))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, undecodable_message(request.type_name))
        return await behaviour(request, context)

    return handle


def add_to_server(server: grpc.aio.Server, manager: SessionManager) -> None:
    """Register the SessionService like the generated ``add_SessionServiceServicer_to_server``, but with lenient
    request deserializers (the methods, request and response types come from the proto's own descriptor)."""
    servicer = SessionServiceServicer(manager)
    service = session_pb2.DESCRIPTOR.services_by_name["SessionService"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            refusing_undecodable(method.name, getattr(servicer, method.name)),
            request_deserializer=lenient(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
