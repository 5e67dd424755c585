"""The real login apps of other frameworks (tests/support/frameworks.py) against a real Valkey: what each one
writes to Redis when a user logs in, how the key derives from the cookie, the value's format, its TTL on login and
on later requests, and what logout and expiry leave. docs: /tmp/docs/writers.md records the same facts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import pickle
import pickletools
import re
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import redis

from tests.support import frameworks, servers

pytestmark = pytest.mark.integration

TTL = 120
SHORT_TTL = 2
USER = "1042"  # numeric: Django's _auth_user_id is the primary key, so the id stays the same in every framework
EMAIL = "ada@example.com"
ROLES = ("admin", "dev")


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.RedisServer]:
    server = servers.start_valkey_server(tmp_path_factory.mktemp("writers-valkey"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def db(valkey: servers.RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=valkey.port)
    try:
        yield client
    finally:
        client.close()


def need(kind: str) -> None:
    reason = frameworks.skip_reason(kind)
    if reason is not None:
        pytest.skip(reason)


def running(kind: str, valkey: servers.RedisServer, tmp: Any, **options: Any) -> Iterator[frameworks.Writer]:
    need(kind)
    with frameworks.start(kind, valkey.port, workdir=tmp, **options) as writer:
        yield writer


def assert_ttl_fresh(db: redis.Redis, key: bytes | str, ttl: int) -> None:
    pttl = db.pttl(key)
    assert ttl * 1000 - 3000 < pttl <= ttl * 1000, f"{key!r}: PTTL {pttl} ms, expected about {ttl} s"


def assert_refresh(db: redis.Redis, writer: frameworks.Writer, key: str, cookie: str, *, refreshes: bool) -> None:
    """Let the TTL run down a little, make one authenticated request, and see whether the TTL went back up."""
    time.sleep(1.2)
    before = db.pttl(key)
    assert before <= writer.ttl * 1000 - 1100
    assert writer.whoami(cookie) is not None
    after = db.pttl(key)
    if refreshes:
        assert after > writer.ttl * 1000 - 600, f"TTL not refreshed: {before} -> {after} ms"
    else:
        assert after <= before, f"TTL refreshed: {before} -> {after} ms"


def assert_expires(db: redis.Redis, writer: frameworks.Writer, key: str, cookie: str) -> None:
    assert writer.whoami(cookie) is not None
    assert 0 < db.pttl(key) <= SHORT_TTL * 1000
    deadline = time.monotonic() + SHORT_TTL + 3
    while db.exists(key) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not db.exists(key), "the session outlived its TTL"
    assert writer.whoami(cookie) is None


def assert_logout_deletes(db: redis.Redis, writer: frameworks.Writer, key: str, cookie: str) -> tuple[str, str] | None:
    """Logout deletes the session's key; returns (new cookie, its key) of a session written in its place."""
    assert db.exists(key)
    before = set(db.keys(writer.key_prefix + "*"))
    replacement = writer.logout(cookie)
    assert not db.exists(key)
    after = set(db.keys(writer.key_prefix + "*"))
    added = after - before
    assert writer.whoami(cookie) is None
    if replacement is None:
        assert added == set(), "logout wrote a session without giving its cookie"
        assert after == before - {key.encode()}
        return None
    assert len(added) == 1, added
    return replacement, added.pop().decode()


def assert_anonymous_visit(
    db: redis.Redis, writer: frameworks.Writer, stored: set[bytes] | None, cookie: str | None = None
) -> None:
    """A visit without a session (no cookie, or one naming no stored session) leaves nothing in Redis (stored
    None), or one empty session (its value in stored) under a new cookie, with the full TTL: never a user."""
    before = set(db.keys("*"))
    response = writer.get("/whoami", cookie)
    assert response.status_code == 401
    added = set(db.keys("*")) - before
    issued = writer.issued_cookie(response)
    if stored is None:
        assert (added, issued) == (set(), None)
        return
    assert issued is not None
    assert issued != cookie
    assert len(added) == 1
    key = added.pop()
    assert key.startswith(writer.key_prefix.encode())
    assert db.get(key) in stored
    assert_ttl_fresh(db, key, writer.ttl)
    assert writer.whoami(issued) is None


class NoGlobals(pickle.Unpickler):
    """Loads only what needs no class or function: the test fails if the session pickle names any."""

    def find_class(self, module: str, name: str) -> Any:
        raise AssertionError(f"the session pickle references {module}.{name}")


def ruby_marshal_to_json(data: bytes) -> Any:
    script = 'require "json"; print JSON.generate(Marshal.load($stdin.binmode.read))'
    out = subprocess.run(["ruby", "-e", script], input=data, capture_output=True, check=True, timeout=30).stdout
    return json.loads(out)


def php_unserialize_to_json(data: bytes) -> Any:
    script = 'echo json_encode(unserialize(stream_get_contents(STDIN), ["allowed_classes" => false]));'
    out = subprocess.run(["php", "-r", script], input=data, capture_output=True, check=True, timeout=30).stdout
    return json.loads(out)


def b64_nopad(raw: bytes, *, urlsafe: bool) -> str:
    encoded = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
    return encoded.decode().rstrip("=")


# --------------------------------------------------------------------------------------------------- express


@pytest.fixture(scope="module")
def express(valkey: servers.RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[frameworks.Writer]:
    yield from running("express", valkey, tmp_path_factory.mktemp("express"), ttl=TTL)


def express_key(writer: frameworks.Writer, cookie: str) -> str:
    """connect.sid = urlencode("s:" + id + "." + base64(HMAC-SHA256(secret, id)) without "=") -> "sess:" + id."""
    decoded = urllib.parse.unquote(cookie)
    assert decoded.startswith("s:")
    sid, _, signature = decoded[2:].rpartition(".")
    expected = b64_nopad(hmac.new(writer.secret.encode(), sid.encode(), hashlib.sha256).digest(), urlsafe=False)
    assert hmac.compare_digest(signature, expected)
    return writer.key_prefix + sid


def test_express_login_stores_json_with_passport_user_under_sess_id(
    express: frameworks.Writer, db: redis.Redis
) -> None:
    name, cookie = express.login(USER, EMAIL, ROLES)
    assert name == "connect.sid"
    assert cookie.startswith("s%3A")  # the cookie is URL-encoded: "s:" is sent as "s%3A"
    key = express_key(express, cookie)
    assert db.type(key) == b"string"
    assert_ttl_fresh(db, key, TTL)
    stored = json.loads(db.get(key))
    assert stored["passport"] == {"user": USER}
    assert stored["email"] == EMAIL
    assert stored["roles"] == list(ROLES)
    assert stored["cookie"]["originalMaxAge"] == TTL * 1000
    assert set(stored["cookie"]) >= {"expires", "httpOnly", "path"}
    assert express.whoami(cookie) == {"user": USER, "email": EMAIL, "roles": list(ROLES)}


def test_express_request_refreshes_the_ttl_but_not_the_stored_expires(
    express: frameworks.Writer, db: redis.Redis
) -> None:
    _, cookie = express.login(USER, EMAIL, ROLES)
    key = express_key(express, cookie)
    stored_before = db.get(key)
    assert_refresh(db, express, key, cookie, refreshes=True)
    assert db.get(key) == stored_before  # connect-redis "touch" is EXPIRE only: cookie.expires in the JSON is stale


def test_express_forged_signature_is_not_a_session(express: frameworks.Writer) -> None:
    _, cookie = express.login(USER)
    forged = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    assert express.whoami(forged) is None


def test_express_logout_deletes_the_key(express: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = express.login(USER, EMAIL, ROLES)
    key = express_key(express, cookie)
    assert_logout_deletes(db, express, key, cookie)


def test_express_visit_without_a_session_stores_nothing(express: frameworks.Writer, db: redis.Redis) -> None:
    assert_anonymous_visit(db, express, None)  # saveUninitialized: false
    assert_anonymous_visit(db, express, None, "s%3Aunknown-id.bad-signature")


def test_express_session_expires_with_its_ttl(valkey: servers.RedisServer, db: redis.Redis, tmp_path: Any) -> None:
    for writer in running("express", valkey, tmp_path, ttl=SHORT_TTL):
        _, cookie = writer.login(USER)
        assert_expires(db, writer, express_key(writer, cookie), cookie)


# --------------------------------------------------------------------------------------------------- django


@pytest.fixture(scope="module", params=["cache", "cached_db"])
def django(
    request: pytest.FixtureRequest, valkey: servers.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[frameworks.Writer]:
    yield from running("django", valkey, tmp_path_factory.mktemp("django"), ttl=TTL, engine=request.param)


def django_session(db: redis.Redis, key: str) -> dict[str, Any]:
    raw = db.get(key)
    assert raw is not None
    assert raw[:2] == b"\x80\x05"  # pickle protocol 5 (pickle.HIGHEST_PROTOCOL of Python 3.8+)
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    assert not opcodes & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}
    loaded: dict[str, Any] = NoGlobals(io.BytesIO(raw)).load()
    return loaded


def test_django_login_stores_a_pickled_dict_under_the_cache_key(django: frameworks.Writer, db: redis.Redis) -> None:
    name, cookie = django.login(USER, EMAIL, ROLES)
    assert name == "sessionid"
    assert re.fullmatch(r"[a-z0-9]{32}", cookie)
    key = django.key_prefix + cookie
    assert key.startswith(":1:django.contrib.sessions.cache")
    assert db.type(key) == b"string"
    assert_ttl_fresh(db, key, TTL)
    session = django_session(db, key)
    assert session["_auth_user_id"] == USER
    assert session["_auth_user_backend"] == "django.contrib.auth.backends.ModelBackend"
    assert re.fullmatch(r"[0-9a-f]{64}", session["_auth_user_hash"])
    assert session["email"] == EMAIL
    assert session["roles"] == list(ROLES)
    assert django.whoami(cookie) == {"user": USER, "username": f"user{USER}", "email": EMAIL, "roles": list(ROLES)}


def test_django_cached_db_also_writes_the_database_row(django: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = django.login(USER, EMAIL, ROLES)
    with sqlite3.connect(django.options["database"]) as conn:
        rows = conn.execute("SELECT session_key FROM django_session WHERE session_key = ?", (cookie,)).fetchall()
    assert len(rows) == (1 if django.options["engine"] == "cached_db" else 0)


def test_django_request_does_not_refresh_the_ttl(django: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = django.login(USER, EMAIL, ROLES)
    assert_refresh(db, django, django.key_prefix + cookie, cookie, refreshes=False)


def test_django_save_every_request_refreshes_the_ttl(
    valkey: servers.RedisServer, db: redis.Redis, tmp_path: Any
) -> None:
    for writer in running("django", valkey, tmp_path, ttl=TTL, save_every_request=True):
        _, cookie = writer.login(USER)
        assert_refresh(db, writer, writer.key_prefix + cookie, cookie, refreshes=True)


def test_django_logout_deletes_the_key(django: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = django.login(USER, EMAIL, ROLES)
    assert_logout_deletes(db, django, django.key_prefix + cookie, cookie)


def test_django_visit_without_a_session_stores_nothing(django: frameworks.Writer, db: redis.Redis) -> None:
    assert_anonymous_visit(db, django, None)
    assert_anonymous_visit(db, django, None, "a" * 32)


def test_django_session_expires_with_its_ttl(valkey: servers.RedisServer, db: redis.Redis, tmp_path: Any) -> None:
    for writer in running("django", valkey, tmp_path, ttl=SHORT_TTL):
        _, cookie = writer.login(USER)
        assert_expires(db, writer, writer.key_prefix + cookie, cookie)


# --------------------------------------------------------------------------------------------------- flask


@pytest.fixture(scope="module", params=[False, True], ids=["plain-sid", "signed-sid"])
def flask(
    request: pytest.FixtureRequest, valkey: servers.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[frameworks.Writer]:
    yield from running("flask", valkey, tmp_path_factory.mktemp("flask"), ttl=TTL, use_signer=request.param)


def flask_key(writer: frameworks.Writer, cookie: str) -> str:
    """session = sid, or sid + "." + base64url(HMAC-SHA1(HMAC-SHA1(secret, "flask-session"), sid)) without "="."""
    if not writer.options["use_signer"]:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie)
        return writer.key_prefix + cookie
    sid, _, signature = cookie.rpartition(".")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", sid)
    derived = hmac.new(writer.secret.encode(), b"flask-session", hashlib.sha1).digest()
    expected = b64_nopad(hmac.new(derived, sid.encode(), hashlib.sha1).digest(), urlsafe=True)
    assert hmac.compare_digest(signature, expected)
    return writer.key_prefix + sid


def test_flask_login_stores_msgpack_with_user_id_under_session_sid(flask: frameworks.Writer, db: redis.Redis) -> None:
    name, cookie = flask.login(USER, EMAIL, ROLES)
    assert name == "session"
    key = flask_key(flask, cookie)
    assert db.type(key) == b"string"
    assert_ttl_fresh(db, key, TTL)
    raw = db.get(key)
    assert raw[0] & 0xF0 == 0x80  # a msgpack fixmap
    session = msgspec.msgpack.decode(raw)
    assert session["_user_id"] == USER
    assert session["_fresh"] is True
    assert session["_permanent"] is True
    assert re.fullmatch(r"[0-9a-f]{128}", session["_id"])  # Flask-Login's sha512 of the client's address and UA
    assert session["email"] == EMAIL
    assert session["roles"] == list(ROLES)
    assert flask.whoami(cookie) == {"user": USER, "email": EMAIL, "roles": list(ROLES)}


def test_flask_cookie_the_app_did_not_issue_is_not_a_session(flask: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = flask.login(USER)
    if flask.options["use_signer"]:
        sid = cookie.rpartition(".")[0]
        assert flask.whoami(sid + ".AAAAAAAAAAAAAAAAAAAAAAAAAAA") is None  # a forged signature
        assert flask.whoami(sid) is None  # the bare id of a signed session
    else:
        planted = "A" * 43
        assert flask.whoami(planted) is None
        assert not db.exists(flask.key_prefix + planted)  # an unknown id is replaced, not adopted


def test_flask_request_rewrites_the_value_and_refreshes_the_ttl(flask: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = flask.login(USER, EMAIL, ROLES)
    assert_refresh(db, flask, flask_key(flask, cookie), cookie, refreshes=True)


def test_flask_json_serialization_stores_json(valkey: servers.RedisServer, db: redis.Redis, tmp_path: Any) -> None:
    for writer in running("flask", valkey, tmp_path, ttl=TTL, serialization="json"):
        _, cookie = writer.login(USER, EMAIL, ROLES)
        session = json.loads(db.get(flask_key(writer, cookie)))
        assert (session["_user_id"], session["email"], session["roles"]) == (USER, EMAIL, list(ROLES))


def test_flask_logout_deletes_the_key(flask: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = flask.login(USER, EMAIL, ROLES)
    assert_logout_deletes(db, flask, flask_key(flask, cookie), cookie)


def test_flask_visit_without_a_session_stores_nothing(flask: frameworks.Writer, db: redis.Redis) -> None:
    assert_anonymous_visit(db, flask, None)


def test_flask_session_expires_with_its_ttl(valkey: servers.RedisServer, db: redis.Redis, tmp_path: Any) -> None:
    for writer in running("flask", valkey, tmp_path, ttl=SHORT_TTL, use_signer=True):
        _, cookie = writer.login(USER)
        assert_expires(db, writer, flask_key(writer, cookie), cookie)


# --------------------------------------------------------------------------------------------------- php


@pytest.fixture(scope="module", params=["php", "php_serialize"])
def php(
    request: pytest.FixtureRequest, valkey: servers.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[frameworks.Writer]:
    yield from running("php", valkey, tmp_path_factory.mktemp("php"), ttl=TTL, serialize_handler=request.param)


def test_php_login_stores_the_serialized_session_under_phpredis_session_id(
    php: frameworks.Writer, db: redis.Redis
) -> None:
    name, cookie = php.login(USER, EMAIL, ROLES)
    assert name == "PHPSESSID"
    assert re.fullmatch(r"[0-9a-v]{26}", cookie)  # Debian's php.ini: sid_length 26, 5 bits per character
    key = "PHPREDIS_SESSION:" + cookie
    assert db.type(key) == b"string"
    assert_ttl_fresh(db, key, TTL)
    raw = db.get(key)
    login_time = int(re.search(rb'login_time"?[|;]i:(\d+);', raw).group(1))
    assert abs(login_time - time.time()) < 30
    if php.options["serialize_handler"] == "php":
        # name|serialize(value) per variable, concatenated, nothing around them
        assert raw == (
            b'user_id|s:4:"1042";email|s:15:"ada@example.com";roles|a:2:{i:0;s:5:"admin";i:1;s:3:"dev";}'
            b"login_time|i:%d;" % login_time
        )
    else:
        assert raw.startswith(b"a:4:{")
        assert php_unserialize_to_json(raw) == {
            "user_id": USER, "email": EMAIL, "roles": list(ROLES), "login_time": login_time,
        }  # fmt: skip
    assert php.whoami(cookie) == {"user": USER, "email": EMAIL, "roles": list(ROLES)}


def test_php_request_refreshes_the_ttl(php: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = php.login(USER, EMAIL, ROLES)
    assert_refresh(db, php, "PHPREDIS_SESSION:" + cookie, cookie, refreshes=True)


def test_php_unknown_id_is_not_adopted(php: frameworks.Writer, db: redis.Redis) -> None:
    planted = "a" * 26
    assert php.whoami(planted) is None
    assert not db.exists("PHPREDIS_SESSION:" + planted)  # use_strict_mode: the id is replaced, not adopted


def test_php_logout_deletes_the_key(php: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = php.login(USER, EMAIL, ROLES)
    assert_logout_deletes(db, php, "PHPREDIS_SESSION:" + cookie, cookie)


def test_php_visit_without_a_session_stores_an_empty_one(php: frameworks.Writer, db: redis.Redis) -> None:
    # session_start() writes the session at the end of every request, empty or not
    empty = b"" if php.options["serialize_handler"] == "php" else b"a:0:{}"
    assert_anonymous_visit(db, php, {empty})
    assert_anonymous_visit(db, php, {empty}, "a" * 26)  # use_strict_mode: a new id, not the planted one


def test_php_session_expires_with_its_ttl(valkey: servers.RedisServer, db: redis.Redis, tmp_path: Any) -> None:
    for writer in running("php", valkey, tmp_path, ttl=SHORT_TTL):
        _, cookie = writer.login(USER)
        assert_expires(db, writer, "PHPREDIS_SESSION:" + cookie, cookie)


# --------------------------------------------------------------------------------------------------- rails


@pytest.fixture(scope="module", params=["json", "marshal"])
def rails(
    request: pytest.FixtureRequest, valkey: servers.RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[frameworks.Writer]:
    yield from running("rails", valkey, tmp_path_factory.mktemp("rails"), ttl=TTL, serializer=request.param)


def rails_key(writer: frameworks.Writer, cookie: str) -> str:
    """_session_id = 32 hex (public id) -> "<namespace>:2::" + sha256 hex of the public id (rack's private id)."""
    assert re.fullmatch(r"[0-9a-f]{32}", cookie)
    return writer.key_prefix + hashlib.sha256(cookie.encode()).hexdigest()


def test_rails_login_stores_the_session_under_the_private_id(rails: frameworks.Writer, db: redis.Redis) -> None:
    name, cookie = rails.login(USER, EMAIL, ROLES)
    assert name == "_session_id"
    key = rails_key(rails, cookie)
    assert key.startswith("session:2::")
    assert not db.exists("session:" + cookie)  # nothing under the public id
    assert db.type(key) == b"string"
    assert_ttl_fresh(db, key, TTL)
    raw = db.get(key)
    session = json.loads(raw) if rails.options["serializer"] == "json" else ruby_marshal_to_json(raw)
    login_at = session.pop("login_at")
    assert isinstance(login_at, int)
    assert abs(login_at - time.time()) < 30
    assert session == {"user_id": USER, "email": EMAIL, "roles": list(ROLES)}
    if rails.options["serializer"] == "marshal":
        assert raw[:4] == b"\x04\x08{\x09"  # Marshal 4.8, a Hash of 4 (fixnum 4 = 0x09)
        assert b'I"\x0cuser_id\x06:\x06ET' in raw  # String with the encoding ivar E=true (UTF-8)
        # above 2**30 - 1 an Integer is a Bignum: "l", sign "+", length in 16-bit words (fixnum 2), LE bytes
        assert b"l+\x07" + login_at.to_bytes(4, "little") in raw
    assert rails.whoami(cookie) == {"user": USER, "email": EMAIL, "roles": list(ROLES)}


def test_rails_request_rewrites_the_value_and_refreshes_the_ttl(rails: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = rails.login(USER, EMAIL, ROLES)
    assert_refresh(db, rails, rails_key(rails, cookie), cookie, refreshes=True)


def test_rails_logout_deletes_the_key(rails: frameworks.Writer, db: redis.Redis) -> None:
    _, cookie = rails.login(USER, EMAIL, ROLES)
    replacement = assert_logout_deletes(db, rails, rails_key(rails, cookie), cookie)
    # reset_session leaves a new, empty session (its cookie replaces the old one), with the full TTL
    assert replacement is not None
    new_cookie, replacement_key = replacement
    assert replacement_key == rails_key(rails, new_cookie)
    assert rails.whoami(new_cookie) is None
    assert_ttl_fresh(db, replacement_key, TTL)
    raw = db.get(replacement_key)
    assert raw == (b"{}" if rails.options["serializer"] == "json" else b"\x04\x08{\x00")


def test_rails_visit_with_an_unknown_session_stores_an_empty_one(rails: frameworks.Writer, db: redis.Redis) -> None:
    assert_anonymous_visit(db, rails, None)
    # a cookie naming no stored session: a new id, and the loaded empty session is written back (expire_after)
    empty = b"{}" if rails.options["serializer"] == "json" else b"\x04\x08{\x00"
    assert_anonymous_visit(db, rails, {empty}, "0123456789abcdef0123456789abcdef")


def test_rails_session_expires_with_its_ttl(valkey: servers.RedisServer, db: redis.Redis, tmp_path: Any) -> None:
    for writer in running("rails", valkey, tmp_path, ttl=SHORT_TTL):
        _, cookie = writer.login(USER)
        assert_expires(db, writer, rails_key(writer, cookie), cookie)


# --------------------------------------------------------------------------------------------------- availability


@pytest.mark.parametrize("kind", ["express", "php", "rails"])
def test_a_missing_runtime_is_a_skip_reason_naming_it(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frameworks.shutil, "which", lambda _name: None)
    reason = frameworks._CHECKS[kind]()
    assert reason is not None
    assert {"express": "node", "php": "php", "rails": "ruby"}[kind] in reason
    assert "make framework-deps" in reason


def test_express_without_node_modules_is_a_skip_reason_naming_npm_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    if frameworks.shutil.which("node") is None:
        pytest.skip("node is not installed: the node_modules check comes after it")
    monkeypatch.setattr(frameworks, "EXAMPLES", tmp_path)
    reason = frameworks._express_missing()
    assert reason is not None
    assert "express-session" in reason
    assert "npm ci" in reason


def test_a_missing_python_package_is_a_skip_reason_naming_it() -> None:
    reason = frameworks._python_missing("flask", "no_such_module_for_writers")
    assert reason == "Python packages missing: no_such_module_for_writers (pip install -e '.[dev]')"


def test_an_unknown_framework_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown framework 'struts'"):
        frameworks.skip_reason("struts")
