"""Other frameworks' real login apps (``examples/frameworks/<kind>``), started against a given Redis port.

Each ``start_<kind>(redis_port, **options)`` is a context manager yielding a ``Writer``: the app listens on a free
127.0.0.1 port, logs to ``<workdir>/<kind>.log`` and is stopped on exit. ``skip_reason(kind)`` says why a kind
cannot run here (``None`` when it can): tests skip with it instead of failing when a runtime or package is missing.
``make framework-deps`` installs them all.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import processes, servers

EXAMPLES = processes.REPO_ROOT / "examples" / "frameworks"
KINDS = ("express", "django", "flask", "php", "rails")
INSTALL_HINT = "run `make framework-deps`"
EXPRESS_MODULES = ("express", "express-session", "connect-redis", "redis", "passport")
DEMO_SECRET = "writer-test-secret-0123456789abcdef"
CLEARED = frozenset({'""', "deleted"})  # what Django and PHP set when they delete the cookie


class WriterError(RuntimeError):
    """A framework app answered something other than what its example promises."""


@dataclass
class Writer:
    """A running login app of one framework.

    ``secret`` is what signs its cookies (express, flask with the signer), ``key_prefix`` what it puts before the
    session id in Redis, ``ttl`` the session lifetime it was started with (seconds).
    """

    kind: str
    base_url: str
    cookie_name: str
    ttl: int
    key_prefix: str
    redis_db: int = 0
    secret: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    log: Path | None = None

    def get(self, path: str, cookie_value: str | None = None, params: dict[str, str] | None = None) -> httpx.Response:
        """One GET, sending the cookie byte for byte as a browser would (no re-encoding by a cookie jar)."""
        headers = {"Cookie": f"{self.cookie_name}={cookie_value}"} if cookie_value is not None else {}
        return httpx.get(self.base_url + path, params=params, headers=headers, timeout=10)

    def set_cookie_value(self, response: httpx.Response) -> str | None:
        """The value of this app's cookie in ``response``'s last Set-Cookie for it, exactly as sent back later."""
        found: str | None = None
        for header in response.headers.get_list("set-cookie"):
            name, sep, rest = header.strip().partition("=")
            if sep and name.strip() == self.cookie_name:
                found = rest.split(";", 1)[0].strip()
        return found

    def login(self, user: str, email: str | None = None, roles: Sequence[str] = ()) -> tuple[str, str]:
        """Log ``user`` in through the framework; returns (cookie name, cookie value as the browser sends it)."""
        params = {"user": user, "roles": ",".join(roles)}
        if email is not None:
            params["email"] = email
        response = self.get("/login", params=params)
        value = self.set_cookie_value(response)
        if response.status_code != 200 or not value:
            raise WriterError(
                f"{self.kind} /login answered {response.status_code} {response.text[:300]!r}, cookie {value!r}"
            )
        return self.cookie_name, value

    def whoami(self, cookie_value: str) -> dict[str, Any] | None:
        """The app's own view of the session: its user, email and roles, or None when it sees no login."""
        response = self.get("/whoami", cookie_value)
        if response.status_code == 401:
            return None
        if response.status_code != 200:
            raise WriterError(f"{self.kind} /whoami answered {response.status_code} {response.text[:300]!r}")
        body: dict[str, Any] = response.json()
        return body

    def logout(self, cookie_value: str) -> str | None:
        """Log out through the framework; returns the cookie value the app set instead (Rails' reset_session
        issues a new, empty session), or None when it cleared the cookie or left it alone."""
        response = self.get("/logout", cookie_value)
        if response.status_code != 200:
            raise WriterError(f"{self.kind} /logout answered {response.status_code} {response.text[:300]!r}")
        return self.issued_cookie(response)

    def issued_cookie(self, response: httpx.Response) -> str | None:
        """The session cookie ``response`` gives the browser, or None when it sets none or clears it."""
        value = self.set_cookie_value(response)
        return value if value and value not in CLEARED else None


# --------------------------------------------------------------------------------------------------- availability


def _run_ok(args: Sequence[str], cwd: Path | None = None) -> bool:
    try:
        done = subprocess.run(list(args), capture_output=True, timeout=30, check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _express_missing() -> str | None:
    if shutil.which("node") is None:
        return f"node is not installed (install Node.js 18+ and npm, then {INSTALL_HINT})"
    modules = EXAMPLES / "express" / "node_modules"
    missing = [name for name in EXPRESS_MODULES if not (modules / name / "package.json").exists()]
    if missing:
        return f"examples/frameworks/express has no {', '.join(missing)} in node_modules ({INSTALL_HINT}: npm ci)"
    return None


def _python_missing(*modules: str) -> str | None:
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    return f"Python packages missing: {', '.join(missing)} (pip install -e '.[dev]')" if missing else None


def _php_missing() -> str | None:
    if shutil.which("php") is None:
        return f"php is not installed ({INSTALL_HINT}: Debian php-cli php-redis)"
    extensions = subprocess.run(["php", "-m"], capture_output=True, text=True, check=False).stdout.split()
    return None if "redis" in extensions else f"PHP has no redis extension ({INSTALL_HINT}: Debian php-redis)"


def _rails_missing() -> str | None:
    if shutil.which("ruby") is None or shutil.which("rackup") is None:
        return f"ruby or rackup is not installed ({INSTALL_HINT}: Debian ruby-redis-actionpack ruby-webrick)"
    script = 'require "action_dispatch"; require "redis-actionpack"; require "webrick"'
    if not _run_ok(["ruby", "-e", script]):
        return f"ruby cannot load action_dispatch, redis-actionpack and webrick ({INSTALL_HINT})"
    return None


_CHECKS: dict[str, Callable[[], str | None]] = {
    "express": _express_missing,
    "django": lambda: _python_missing("django", "redis"),
    "flask": lambda: _python_missing("flask", "flask_session", "flask_login", "msgspec"),
    "php": _php_missing,
    "rails": _rails_missing,
}


@functools.cache
def skip_reason(kind: str) -> str | None:
    """Why ``kind``'s app cannot run here, or None when it can."""
    if kind not in _CHECKS:
        raise ValueError(f"unknown framework {kind!r}; one of {KINDS}")
    return _CHECKS[kind]()


# --------------------------------------------------------------------------------------------------- servers


@contextlib.contextmanager
def _serve(
    writer: Writer, args: list[str], env: dict[str, str], cwd: Path, port: int, workdir: Path | None
) -> Iterator[Writer]:
    reason = skip_reason(writer.kind)
    if reason is not None:
        raise WriterError(f"{writer.kind} is unavailable: {reason}")
    directory = workdir or Path(tempfile.mkdtemp(prefix=f"writer-{writer.kind}-"))
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{writer.kind}-{port}.log"
    writer.log = log
    server = servers.Server(writer.kind, log)
    with log.open("ab") as out:
        server.attach(
            subprocess.Popen(
                args,
                cwd=cwd,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        server.wait_listening(port)
        yield writer
    finally:
        server.stop()


def _redis_url(redis_port: int, db: int) -> str:
    return f"redis://{processes.LOOPBACK}:{redis_port}/{db}"


@contextlib.contextmanager
def start_express(
    redis_port: int,
    *,
    ttl: int = 86400,
    secret: str = DEMO_SECRET,
    prefix: str = "sess:",
    db: int = 0,
    workdir: Path | None = None,
) -> Iterator[Writer]:
    """express-session + connect-redis + passport (``node app.js``)."""
    port = processes.free_port()
    writer = Writer("express", f"http://{processes.LOOPBACK}:{port}", "connect.sid", ttl, prefix, db, secret)
    env = {
        "PORT": str(port),
        "REDIS_URL": _redis_url(redis_port, db),
        "SESSION_TTL": str(ttl),
        "SESSION_SECRET": secret,
        "SESSION_PREFIX": prefix,
    }
    node = shutil.which("node") or "node"
    with _serve(writer, [node, "app.js"], env, EXAMPLES / "express", port, workdir) as running:
        yield running


DJANGO_PREFIXES = {"cache": ":1:django.contrib.sessions.cache", "cached_db": ":1:django.contrib.sessions.cached_db"}


@contextlib.contextmanager
def start_django(
    redis_port: int,
    *,
    engine: str = "cache",
    ttl: int = 1209600,
    save_every_request: bool = False,
    db: int = 0,
    workdir: Path | None = None,
) -> Iterator[Writer]:
    """Django's ``cache`` (or ``cached_db``) session engine on its built-in RedisCache; runserver."""
    port = processes.free_port()
    writer = Writer(
        "django",
        f"http://{processes.LOOPBACK}:{port}",
        "sessionid",
        ttl,
        DJANGO_PREFIXES[engine],
        db,
        options={"engine": engine, "save_every_request": save_every_request},
    )
    directory = workdir or Path(tempfile.mkdtemp(prefix="writer-django-"))
    env = {
        "PORT": str(port),
        "REDIS_URL": _redis_url(redis_port, db),
        "SESSION_ENGINE": engine,
        "SESSION_TTL": str(ttl),
        "SESSION_SAVE_EVERY_REQUEST": "1" if save_every_request else "0",
        "DJANGO_DB": str(directory / f"django-{port}.sqlite3"),
        "DJANGO_SECRET_KEY": DEMO_SECRET,
    }
    writer.options["database"] = env["DJANGO_DB"]
    with _serve(writer, [sys.executable, "app.py"], env, EXAMPLES / "django", port, directory) as running:
        yield running


@contextlib.contextmanager
def start_flask(
    redis_port: int,
    *,
    ttl: int = 2678400,
    use_signer: bool = False,
    serialization: str = "msgpack",
    refresh_each_request: bool = True,
    prefix: str = "session:",
    secret: str = DEMO_SECRET,
    db: int = 0,
    workdir: Path | None = None,
) -> Iterator[Writer]:
    """Flask-Session's RedisSessionInterface + Flask-Login (Werkzeug's dev server)."""
    port = processes.free_port()
    writer = Writer(
        "flask",
        f"http://{processes.LOOPBACK}:{port}",
        "session",
        ttl,
        prefix,
        db,
        secret,
        options={"use_signer": use_signer, "serialization": serialization},
    )
    env = {
        "PORT": str(port),
        "REDIS_URL": _redis_url(redis_port, db),
        "SESSION_TTL": str(ttl),
        "SESSION_USE_SIGNER": "1" if use_signer else "0",
        "SESSION_SERIALIZATION_FORMAT": serialization,
        "SESSION_REFRESH_EACH_REQUEST": "1" if refresh_each_request else "0",
        "SESSION_KEY_PREFIX": prefix,
        "FLASK_SECRET_KEY": secret,
    }
    with _serve(writer, [sys.executable, "app.py"], env, EXAMPLES / "flask", port, workdir) as running:
        yield running


@contextlib.contextmanager
def start_php(
    redis_port: int,
    *,
    serialize_handler: str = "php",
    ttl: int = 1440,
    db: int = 0,
    workdir: Path | None = None,
) -> Iterator[Writer]:
    """PHP sessions saved by phpredis (``php -S`` with index.php as the router)."""
    port = processes.free_port()
    writer = Writer(
        "php",
        f"http://{processes.LOOPBACK}:{port}",
        "PHPSESSID",
        ttl,
        "PHPREDIS_SESSION:",
        db,
        options={"serialize_handler": serialize_handler},
    )
    save_path = f"tcp://{processes.LOOPBACK}:{redis_port}?database={db}"
    args = [
        shutil.which("php") or "php",
        "-d", "session.save_handler=redis",
        "-d", f'session.save_path="{save_path}"',  # quoted: "?" and "=" are ini syntax
        "-d", f"session.serialize_handler={serialize_handler}",
        "-d", f"session.gc_maxlifetime={ttl}",
        "-d", "session.use_strict_mode=1",
        "-S", f"{processes.LOOPBACK}:{port}",
        "index.php",
    ]  # fmt: skip
    with _serve(writer, args, {"PHP_CLI_SERVER_WORKERS": "1"}, EXAMPLES / "php", port, workdir) as running:
        yield running


@contextlib.contextmanager
def start_rails(
    redis_port: int,
    *,
    serializer: str = "json",
    ttl: int = 86400,
    namespace: str = "session",
    cookie_name: str = "_session_id",
    db: int = 0,
    workdir: Path | None = None,
) -> Iterator[Writer]:
    """ActionDispatch::Session::RedisStore (redis-actionpack) in a Rack app, served by rackup + WEBrick."""
    port = processes.free_port()
    writer = Writer(
        "rails",
        f"http://{processes.LOOPBACK}:{port}",
        cookie_name,
        ttl,
        f"{namespace}:2::",
        db,
        options={"serializer": serializer, "namespace": namespace},
    )
    env = {
        "REDIS_URL": _redis_url(redis_port, db),
        "SESSION_SERIALIZER": serializer,
        "SESSION_TTL": str(ttl),
        "SESSION_NAMESPACE": namespace,
        "SESSION_KEY": cookie_name,
    }
    rackup = shutil.which("rackup") or "rackup"
    args = [rackup, "-s", "webrick", "-o", processes.LOOPBACK, "-p", str(port), "config.ru"]
    with _serve(writer, args, env, EXAMPLES / "rails", port, workdir) as running:
        yield running


STARTERS: dict[str, Callable[..., contextlib.AbstractContextManager[Writer]]] = {
    "express": start_express,
    "django": start_django,
    "flask": start_flask,
    "php": start_php,
    "rails": start_rails,
}


def start(kind: str, redis_port: int, **options: Any) -> contextlib.AbstractContextManager[Writer]:
    """``start_<kind>(redis_port, **options)`` by name (for tests parametrized over the frameworks)."""
    return STARTERS[kind](redis_port, **options)
