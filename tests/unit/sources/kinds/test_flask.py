from itsdangerous import Signer

from sidecar.sources.framework import Settings
from sidecar.sources.kinds import flask
from sidecar.sources.paths import Paths

SID = "vV0bYxj2m8Qf3kL9pR1sT4uW6yA7cE5gH0iJ2kN4oP6"
SECRET = b"flask-app-secret-key"


def flask_session_cookie(sid: str, secret: bytes) -> str:
    """What Flask-Session's _sign writes with SESSION_USE_SIGNER (its Signer settings)."""
    return Signer(secret, salt="flask-session", key_derivation="hmac").sign(sid.encode()).decode()


def settings(secrets: tuple[bytes, ...], serializer: str = "msgpack") -> Settings:
    return Settings("session", "session:", serializer, secrets, Paths("_user_id"))


def test_without_secrets_the_cookie_is_the_sid() -> None:
    kind = flask.kind(settings(()))
    assert kind.session_id(SID) == SID
    assert kind.store_key(SID) == "session:" + SID
    assert kind.session_id("short") is None
    assert kind.session_id("has space in it and more") is None


def test_with_secrets_only_a_signed_cookie_gives_the_sid() -> None:
    kind = flask.kind(settings((b"rotated-out-secret", SECRET)))
    assert kind.session_id(flask_session_cookie(SID, SECRET)) == SID
    assert kind.session_id(SID) is None
    assert kind.session_id(flask_session_cookie(SID, b"another-apps-secret")) is None


def test_the_serializer_picks_the_decoder() -> None:
    assert flask.kind(settings((), "json")).decode(b'{"_user_id": "7"}') == {"_user_id": "7"}
