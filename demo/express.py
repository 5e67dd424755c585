"""``make run-express``: the demo stack reading the sessions a real Express app keeps in the same Valkey.

The app is ``examples/frameworks/express`` (express-session + connect-redis + passport), started by the helper the
tests use (``tests.support.frameworks.start_express``) with a secret made for this run. The sidecar is configured
with ``sources: [native, express]`` and that secret in a file of the work directory: it verifies the app's signed
``connect.sid`` cookie, reads ``sess:<id>`` (JSON) and sends the user on as ``x-user-id``. Nothing in the app knows
the sidecar exists. The launcher logs a demo user in through the app and prints the curl lines to try.
"""

from __future__ import annotations

import secrets
import shlex
import socket
from pathlib import Path
from urllib.parse import urlsplit

from demo.stack import LOOPBACK, LaunchError, Running, Stack, Watched, print_footer, say
from tests.support import frameworks, servers

DEMO_USER = "alice"
DEMO_EMAIL = "alice@example.com"
DEMO_ROLES = ("admin", "dev")
SECRETS_FILE = "express-secrets"
# Where the example app keeps them: its own choice (passport.user, the default path, holds the user id).
SOURCES = "[{{kind: native}}, {{kind: express, secrets_file: {path}, email: email, roles: roles}}]"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})  # the app is given 127.0.0.1


def check_available(environ: dict[str, str]) -> None:
    """Fail before anything starts when Node.js or the example's npm packages are missing, or when the app could
    not reach the store the sidecar is given."""
    reason = frameworks.skip_reason("express")
    if reason is not None:
        raise LaunchError(f"the Express demo needs Node.js and the example's npm packages: {reason}")
    if environ.get("SIDECAR_REDIS__URL"):
        redis_address(environ["SIDECAR_REDIS__URL"])


def sidecar_env(workdir: Path) -> dict[str, str]:
    """The sidecar's ``sources`` (native, then express) with a secret made for this run, kept in ``workdir``."""
    path = workdir / SECRETS_FILE
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return {"SIDECAR_SOURCES": SOURCES.format(path=path)}


def secret_of(workdir: Path) -> str:
    return (workdir / SECRETS_FILE).read_text().strip()


def redis_address(url: str) -> tuple[int, int]:
    """The port and database of a plain ``redis://`` URL on this machine: the app must reach the sidecar's Redis."""
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        port = 0
    database = parts.path.strip("/") or "0"
    if parts.scheme != "redis" or parts.hostname not in _LOOPBACK_HOSTS or not port or not database.isdigit():
        raise LaunchError(
            "the Express demo runs its app on the sidecar's Redis and needs it at redis://127.0.0.1:PORT/DB: "
            "unset SIDECAR_REDIS__URL to use the embedded Valkey"
        )
    if parts.password or parts.username:
        raise LaunchError("the Express demo cannot pass Redis credentials to the app: unset SIDECAR_REDIS__URL")
    return port, int(database)


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def run(stack: Stack, running: Running) -> None:
    """Start the Express app on the stack's Redis, log the demo user in through it, and print how to try it."""
    redis_port, database = redis_address(running.redis_url)
    try:
        app = stack.contexts.enter_context(
            frameworks.start_express(redis_port, secret=secret_of(stack.workdir), db=database, workdir=stack.workdir)
        )
        port = urlsplit(app.base_url).port
        assert port is not None
        stack.watched.append(Watched("express app", lambda: _answers(port), app.log))
        say(f"express    {app.base_url} (examples/frameworks/express: express-session + connect-redis + passport)")
        name, value = app.login(DEMO_USER, email=DEMO_EMAIL, roles=DEMO_ROLES)
    except (frameworks.WriterError, servers.StackError) as exc:
        raise LaunchError(f"the Express app: {exc}") from None
    _print_usage(stack, running, app.base_url, f"{name}={value}")


def _print_usage(stack: Stack, running: Running, app_url: str, cookie_pair: str) -> None:
    base = running.base
    cookie = shlex.quote(f"Cookie: {cookie_pair}")
    login = shlex.quote(f"{app_url}/login?user={DEMO_USER}&email={DEMO_EMAIL}&roles={','.join(DEMO_ROLES)}")
    name, _, value = cookie_pair.partition("=")
    sid = value.rpartition(".")[0]
    tampered = shlex.quote(f"Cookie: {name}={sid}.{'A' * 43}")
    say()
    say(f"Sessions: sources: [native, express] (SIDECAR_SOURCES); the app's secret is in {SECRETS_FILE} there too")
    say("The Express app logged a user in (its own session in Redis, key sess:<id>, JSON):")
    say(f"  curl -s -i {login}")
    say(f"  cookie: {cookie_pair}")
    say()
    say("Try it:")
    say("  # allowed: the upstream sees the Express user as x-user-id: alice, x-user-email, x-user-roles")
    say(f"  curl -s -H {cookie} {base}/hello")
    say("  # the same cookie with a forged signature: denied (401) before any Redis read")
    say(f"  curl -s -i -H {tampered} {base}/hello")
    if running.admin is not None:
        admin_url = f"http://{running.admin[0]}:{running.admin[1]}"
        say("  # reads of the Express sessions, by what they found (every request reads Redis: no cache)")
        say(f"  curl -s {admin_url}/metrics | grep ^sidecar_source_reads")
    say("  # log out through the app; then the first curl line answers 401 (on the very next request):")
    say(f"  curl -s -H {cookie} {app_url}/logout")
    say()
    print_footer(stack)
