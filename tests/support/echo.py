"""The demo / e2e upstream: answers every request with what it received, as JSON.

``python -m tests.support.echo --host 127.0.0.1 --port 8081``

Every method and path gets ``200`` and ``{"method": ..., "path": ..., "headers": {name: [values]}}`` where
``name`` is lower-cased and duplicate headers stay separate list items, in the order they arrived. Tests use
it to see exactly which identity headers and cookies the upstream service would see. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class EchoHandler(BaseHTTPRequestHandler):
    """Echoes method, path and headers; reads and discards any request body."""

    protocol_version = "HTTP/1.1"  # keep-alive, so Envoy can reuse its upstream connections
    server_version = "session-sidecar-echo"
    sys_version = ""
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to each one.
    disable_nagle_algorithm = True

    def _echo(self) -> None:
        self._drain_body()
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():  # every header line, duplicates included, in order
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps({"method": self.command, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drain_body(self) -> None:
        length = self.headers.get("Content-Length")
        if length is not None and length.strip().isdigit():
            remaining = int(length)
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
        elif "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    return
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                self.rfile.read(size + 2)

    do_GET = _echo
    do_HEAD = _echo
    do_POST = _echo
    do_PUT = _echo
    do_PATCH = _echo
    do_DELETE = _echo
    do_OPTIONS = _echo

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the e2e tests run thousands of requests through here."""


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True


def make_server(host: str, port: int) -> EchoServer:
    """Bind (port 0 picks a free port: read ``server.server_address``)."""
    return EchoServer((host, port), EchoHandler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.echo", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port)

    def _stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    print(
        f"echo upstream listening on http://{args.host}:{server.server_address[1]}",
        file=sys.stderr,
        flush=True,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
