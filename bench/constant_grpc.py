"""The gRPC ceiling of ``bench/throughput.py`` (issue #14): an ext_authz server that does no work at all.

A sync ``grpc.server`` on a ``ThreadPoolExecutor`` of 4 threads, the fastest server model measured on this
machine, whose ``Check`` returns one ``CheckResponse`` built at start (OK, with the ``x-user-id`` header the naive
baseline and the sidecar also set). It reads nothing of the request: whatever the sidecar does per Check, it cannot
use less of this stack than this.

    python bench/constant_grpc.py --port 9301 [--threads 4]
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

USER = "bench"

ALLOW = external_auth_pb2.CheckResponse(
    status=status_pb2.Status(code=code_pb2.OK),
    ok_response=external_auth_pb2.OkHttpResponse(
        headers=[base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="x-user-id", value=USER))]
    ),
)


class ConstantAuthorization(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def Check(self, request: Any, context: Any) -> Any:  # the gRPC method's name
        return ALLOW


def main() -> None:
    parser = argparse.ArgumentParser(description="constant-answer ext_authz gRPC server (the gRPC ceiling)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4, help="handler threads of the grpc.server")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads), options=[("grpc.so_reuseport", 0)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(ConstantAuthorization(), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
