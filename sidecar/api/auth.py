"""The bearer-token guard of the SessionService API, as a grpc.aio server interceptor.

Only methods under ``/sidecar.session.v1.SessionService/`` are guarded: Envoy's ext_authz ``Check`` and
``grpc.health.v1`` share the listener and must stay callable without a token (Envoy calls them). A guarded call
needs the metadata ``authorization: Bearer <api.token>``; the token is compared in constant time, and any other
call is aborted with UNAUTHENTICATED before it reaches the servicer.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from sidecar.api.servicer import SERVICE_NAME

log = logging.getLogger("sidecar.api")

GUARDED_PREFIX = f"/{SERVICE_NAME}/"
DENIED_MESSAGE = "missing or invalid bearer token"
_SCHEME = "bearer"

if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler


def bearer_credential(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The credential of the one ``authorization: Bearer <credential>`` entry, or None (absent, repeated, other)."""
    values = [value for key, value in metadata or () if key.lower() == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, sep, credential = values[0].partition(" ")
    if not sep or scheme.lower() != _SCHEME:
        return None
    return credential.strip(" ") or None


async def _deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED_MESSAGE)


class BearerTokenInterceptor(_Interceptor):
    """Guards the SessionService methods with a bearer token; passes every other method straight through."""

    def __init__(self, token: str, prefix: str = GUARDED_PREFIX) -> None:
        if not token:
            raise ValueError("the API bearer token must not be empty")
        self._expected = token.encode("utf-8")
        self._prefix = prefix
        # All SessionService RPCs are unary-unary, so one pre-built handler answers every refused call.
        self._denied: _Handler = grpc.unary_unary_rpc_method_handler(_deny)

    def allows(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        credential = bearer_credential(metadata)
        presented = credential.encode("utf-8", "replace") if credential is not None else b""
        # Always compare (even when nothing was presented) so the timing says nothing about the token.
        return hmac.compare_digest(presented, self._expected) and credential is not None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        if not handler_call_details.method.startswith(self._prefix):
            return await continuation(handler_call_details)
        if self.allows(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        log.debug("SessionService call %s refused: %s", handler_call_details.method, DENIED_MESSAGE)
        return self._denied
