"""The ``session-sidecar`` command line: serve, session create|revoke|revoke-user|list, config check,
assertion keygen.

Exit codes: 0 success; 2 bad input or bad config (stderr names the key or argument); 1 a runtime failure such as
an unreachable store. Errors are one line each on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sidecar import app, shutdown, wiring, workers
from sidecar.authz.assertion_issuer import ALGORITHMS
from sidecar.config import Config, load_config, redacted
from sidecar.core.durations import parse_duration
from sidecar.core.session import describe, shown
from sidecar.errors import BadInput, ConfigError, RuntimeFailure, StoreTimeout, StoreUnavailable
from sidecar.lifecycle import SessionManager

T = TypeVar("T")

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
# The CLI is not on a request path: give a slow store a fair chance before calling it unreachable.
CLI_STORE_TIMEOUT = 3.0


def _with_manager(config: Config, action: Callable[[SessionManager], Awaitable[T]]) -> T:
    async def run() -> T:
        store = wiring.open_store(config, CLI_STORE_TIMEOUT)
        try:
            async with asyncio.timeout(CLI_STORE_TIMEOUT * 2):
                return await action(wiring.session_manager(config, store))
        except TimeoutError:
            raise StoreTimeout(f"redis.url: the store did not answer within {CLI_STORE_TIMEOUT * 2:.0f}s") from None
        except app.UNMAPPED_STORE_ERRORS as exc:
            raise StoreUnavailable(f"redis.url: the store is unreachable ({exc})") from None
        finally:
            await store.close()

    return asyncio.run(run())


def _duration_arg(flag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise BadInput(f"{flag}: {exc}") from None


def _attributes(pairs: Sequence[str]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BadInput(f"--attr: expected KEY=VALUE, got {shown(pair)}")
        if key in attributes:
            raise BadInput(f"--attr: {shown(key)} given twice")
        attributes[key] = value
    return attributes


def _roles(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    roles = tuple(role.strip(" \t") for role in text.split(","))
    if any(not role for role in roles):
        raise BadInput(f"--roles: empty role name in {shown(text)} (use r1,r2)")
    return roles


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


def cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    app.configure_logging(config.log.level, config.log.format)
    if args.workers != 1:
        return workers.supervise(workers.worker_argv(args.config), workers.worker_environments(config, args.workers))
    with contextlib.suppress(ImportError):  # uvloop is an optional speed-up, absent on some platforms
        import uvloop  # noqa: PLC0415

        uvloop.install()
    with contextlib.suppress(KeyboardInterrupt):
        shutdown.run_bounded(app.serve(config, reload=lambda: load_config(args.config)))
    return EXIT_OK


def cmd_session_create(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    idle = _duration_arg("--idle-timeout", args.idle_timeout)
    absolute = _duration_arg("--absolute-timeout", args.absolute_timeout)
    roles = _roles(args.roles)
    attributes = _attributes(args.attr or [])

    async def create(manager: SessionManager) -> Any:
        return await manager.create(
            args.user,
            email=args.email,
            roles=roles,
            attributes=attributes,
            idle_timeout=idle,
            absolute_timeout=absolute,
        )

    issued = _with_manager(config, create)
    _print_json({"token": issued.token, "set_cookie": issued.set_cookie, **describe(issued.record)})
    return EXIT_OK


def cmd_session_revoke(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    existed = _with_manager(config, lambda manager: manager.revoke(args.token))
    _print_json({"revoked": int(existed)})
    return EXIT_OK


def cmd_session_revoke_user(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not args.user:
        raise BadInput("USER: must not be empty")
    count = _with_manager(config, lambda manager: manager.revoke_user(args.user))
    _print_json({"revoked": count})
    return EXIT_OK


def cmd_session_list(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not args.user:
        raise BadInput("USER: must not be empty")
    records = _with_manager(config, lambda manager: manager.list(args.user))
    _print_json([describe(record) for record in records])
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    sys.stdout.write(yaml.safe_dump(redacted(config), sort_keys=False))
    sys.stdout.write(mesh_snippets(config))
    return EXIT_OK


# What a denial may show the client (Envoy always passes status, content-length, www-authenticate and location).
_CLIENT_HEADERS = ("content-type", "cache-control", "www-authenticate", "location", "retry-after")


def _identity_names(config: Config) -> list[str]:
    """The header names an allow sets upstream: headers.* and, when enabled, assertion.header."""
    headers = config.headers
    names = [headers.user_id, headers.email, headers.roles, headers.session]
    if config.assertion.enabled:
        names.append(config.assertion.header)
    return names


def _request_headers(config: Config) -> list[str]:
    """What the sidecar reads of the client request besides method, path, host and authorization.

    The identity names are sent so the sidecar sees (and removes) a client's forged copies. The headers naming an
    original request (X-Forwarded-Uri, X-Original-*) are never listed: behind Envoy a client could set them, and
    the request line already is the original request.
    """
    names = ["cookie", "accept", "sec-fetch-mode", "x-forwarded-proto"]
    if config.forward_auth.trusted_hops:
        names.append("x-forwarded-for")  # read only to count invalid tokens per client address
    return names + _identity_names(config)


def _upstream_headers(config: Config) -> list[str]:
    return _identity_names(config) + (["cookie"] if config.cookie.strip_upstream else [])


def _authz_timeout(config: Config) -> str:
    # Above the sidecar's own store deadline, so a slow store is answered by the sidecar's 503, not by the timeout.
    return f"{max(0.25, round(config.redis.timeout + 0.1, 3)):g}s"


def _http_target(config: Config) -> tuple[str, int]:
    host, _, port = config.listen.http.rpartition(":")
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1"
    return host, int(port)


def envoy_http_snippet(config: Config) -> dict[str, object]:
    """The envoy.filters.http.ext_authz settings of HTTP mode for ``config`` (mesh-config/envoy/envoy-http.yaml)."""
    host, port = _http_target(config)
    prefixes = list(config.headers.strip_prefixes)
    upstream = [{"exact": name} for name in _upstream_headers(config)] + [{"prefix": p} for p in prefixes]
    return {
        "http_service": {
            "server_uri": {
                "uri": f"http://{host}:{port}",
                "cluster": "session_sidecar_http",
                "timeout": _authz_timeout(config),
            },
            "authorization_response": {
                "allowed_upstream_headers": {"patterns": upstream},
                "dynamic_metadata_from_headers": {"patterns": [{"prefix": "x-authz-"}]},
                "allowed_client_headers": {"patterns": [{"exact": name} for name in _CLIENT_HEADERS]},
            },
        },
        "allowed_headers": {
            "patterns": [{"exact": name} for name in _request_headers(config)] + [{"prefix": p} for p in prefixes]
        },
        "encode_raw_headers": True,
        "failure_mode_allow": False,
        "status_on_error": {"code": 503},
        "clear_route_cache": False,
        "validate_mutations": True,
    }


def istio_http_snippet(config: Config) -> dict[str, object]:
    """The meshConfig.extensionProviders entry of HTTP mode that matches ``config`` (mesh-config/istio/)."""
    _, port = _http_target(config)
    prefixes = [f"{p}*" for p in config.headers.strip_prefixes]
    return {
        "extensionProviders": [
            {
                "name": "session-sidecar-http",
                "envoyExtAuthzHttp": {
                    "service": "session-sidecar.local",
                    "port": port,
                    "timeout": _authz_timeout(config),
                    "failOpen": False,
                    "statusOnError": "503",
                    "includeRequestHeadersInCheck": _request_headers(config) + prefixes,
                    "headersToUpstreamOnAllow": _upstream_headers(config) + prefixes,
                    "headersToDownstreamOnDeny": list(_CLIENT_HEADERS),
                },
            }
        ]
    }


def _commented(title: str, data: dict[str, object]) -> str:
    body = yaml.safe_dump(data, sort_keys=False)
    return f"#\n# {title}\n" + "".join(f"#   {line}\n" for line in body.splitlines())


def mesh_snippets(config: Config) -> str:
    """The HTTP-mode header lists for Envoy and Istio that match ``config``, as YAML comments (so ``config check``
    output stays one YAML document)."""
    if not config.listen.http:
        return "#\n# listen.http is empty: HTTP ext_authz is off (the gRPC mode needs no header lists).\n"
    return _commented(
        "Envoy HTTP ext_authz for this config: the typed_config of envoy.filters.http.ext_authz "
        "(mesh-config/envoy/envoy-http.yaml)",
        envoy_http_snippet(config),
    ) + _commented(
        "Istio HTTP ext_authz for this config: meshConfig (mesh-config/istio/mesh-config.yaml); service "
        "session-sidecar.local is per-pod mode (serviceentry.yaml), use the Service's name in central mode",
        istio_http_snippet(config),
    )


def _new_private_key_pem(algorithm: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256" else ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _write_new_file(path: str, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; never overwrite or follow a symlink (O_EXCL)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise BadInput(
            f"--out: {path} already exists; refusing to overwrite a key (remove it or pick another path)"
        ) from None
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        raise BadInput(f"--out: cannot create {path}: {exc.strerror}") from None
    except OSError as exc:
        raise RuntimeFailure(f"--out: cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # the umask may only have narrowed it; make the mode exact
            out.write(data)
    except OSError as exc:
        # A half-written key would later fail config check with a confusing message: leave nothing behind.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise RuntimeFailure(f"--out: cannot write {path}: {exc.strerror or exc}") from None


def cmd_assertion_keygen(args: argparse.Namespace) -> int:
    pem = _new_private_key_pem(args.algorithm)
    if args.out == "-":
        sys.stdout.write(pem.decode("ascii"))
        return EXIT_OK
    _write_new_file(args.out, pem)
    _print_json({"algorithm": args.algorithm, "private_key_file": os.path.abspath(args.out)})
    return EXIT_OK


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # same exit code (2), but one line plus usage and no Python noise
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    config_help = "YAML config file (default: $SIDECAR_CONFIG, else built-in defaults)"
    parser = _Parser(prog="session-sidecar", description="Session/identity sidecar for Envoy ext_authz.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the ext_authz gRPC server")
    serve.add_argument("--config", help=config_help)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="N processes; worker i listens on the configured ports + i (list them as separate Envoy endpoints)",
    )
    serve.set_defaults(func=cmd_serve)

    session = commands.add_parser("session", help="create, revoke and list sessions")
    session_commands = session.add_subparsers(dest="session_command", required=True, parser_class=_Parser)

    create = session_commands.add_parser("create", help="issue a session; prints JSON with the token")
    create.add_argument("--user", required=True, help="user id (becomes x-user-id)")
    create.add_argument("--email")
    create.add_argument("--roles", help="comma-separated roles, e.g. admin,dev")
    create.add_argument("--attr", action="append", metavar="KEY=VALUE", help="an attribute; repeatable")
    create.add_argument("--idle-timeout", metavar="DUR", help="e.g. 30m (default: session.idle_timeout)")
    create.add_argument("--absolute-timeout", metavar="DUR", help="e.g. 12h (default: session.absolute_timeout)")
    create.add_argument("--config", help=config_help)
    create.set_defaults(func=cmd_session_create)

    for name, metavar, dest, help_text, func in (
        ("revoke", "TOKEN", "token", "revoke one session by its token", cmd_session_revoke),
        ("revoke-user", "USER", "user", "revoke every session of a user", cmd_session_revoke_user),
        ("list", "USER", "user", "list a user's live sessions (never tokens)", cmd_session_list),
    ):
        sub = session_commands.add_parser(name, help=help_text)
        sub.add_argument(dest, metavar=metavar)
        sub.add_argument("--config", help=config_help)
        sub.set_defaults(func=func)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    check = config_commands.add_parser("check", help="print the effective config (secrets redacted) or its problems")
    check.add_argument("--config", help=config_help)
    check.set_defaults(func=cmd_config_check)

    assertion = commands.add_parser("assertion", help="signed identity assertion tools")
    assertion_commands = assertion.add_subparsers(dest="assertion_command", required=True, parser_class=_Parser)
    keygen = assertion_commands.add_parser(
        "keygen", help="write a new assertion signing key (unencrypted PKCS#8 PEM, mode 0600) for assertion.keys"
    )
    keygen.add_argument("--algorithm", required=True, choices=ALGORITHMS, help="ES256 (P-256) or EdDSA (Ed25519)")
    keygen.add_argument("--out", required=True, metavar="PATH", help="a new file (never overwritten); - for stdout")
    keygen.set_defaults(func=cmd_assertion_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        if len(exc.problems) == 1:
            sys.stderr.write(f"session-sidecar: configuration problem: {exc.problems[0]}\n")
            return EXIT_BAD_INPUT
        sys.stderr.write(f"session-sidecar: {len(exc.problems)} configuration problems:\n")
        for problem in exc.problems:
            sys.stderr.write(f"  {problem}\n")
        return EXIT_BAD_INPUT
    except BadInput as exc:
        sys.stderr.write(f"session-sidecar: error: {exc}\n")
        return EXIT_BAD_INPUT
    except RuntimeFailure as exc:
        sys.stderr.write(f"session-sidecar: error: {exc}\n")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130
    sys.stdout.flush()
    return code
