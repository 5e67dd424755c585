import base64
import hashlib
import hmac

from sidecar.sources.framework import Settings
from sidecar.sources.kinds import express
from sidecar.sources.paths import Paths

SID = "Xq3fB1xk2wS0aP9mLr7tY5uV8cE4hJ6n"
OLD, NEW = b"old-secret-value", b"new-secret-value"


def signed(sid: str, secret: bytes) -> str:
    """What cookie-signature's sign() and express-session's setcookie write: s:<id>.<b64 hmac>, percent-encoded."""
    mac = base64.b64encode(hmac.new(secret, sid.encode(), hashlib.sha256).digest()).decode().rstrip("=")
    return "s%3A" + sid + "." + mac.replace("+", "%2B").replace("/", "%2F")


def test_a_cookie_signed_with_any_configured_secret_gives_its_id() -> None:
    assert express.session_id(signed(SID, OLD), (NEW, OLD)) == SID
    assert express.session_id(signed(SID, NEW), (NEW, OLD)) == SID


def test_a_cookie_signed_with_another_secret_gives_nothing() -> None:
    assert express.session_id(signed(SID, b"someone-elses-secret"), (NEW, OLD)) is None


def test_a_tampered_id_or_signature_gives_nothing() -> None:
    cookie = signed(SID, NEW)
    assert express.session_id(cookie.replace(SID, SID[:-1] + "A"), (NEW,)) is None
    assert express.session_id(cookie[:-1], (NEW,)) is None


def test_an_unsigned_or_malformed_cookie_gives_nothing() -> None:
    assert express.session_id(SID, (NEW,)) is None  # express-session ignores a cookie without s:
    assert express.session_id("s%3A" + SID, (NEW,)) is None  # no signature
    assert express.session_id("s%3Aa.b", (NEW,)) is None  # an id too short to be one
    assert express.session_id("s%3A%FF%FE.sig", (NEW,)) is None  # percent-encoded bytes that are not UTF-8


def test_the_kind_reads_sess_prefixed_keys() -> None:
    kind = express.kind(Settings("connect.sid", "sess:", "", (NEW,), Paths("passport.user")))
    assert kind.store_key(SID) == "sess:" + SID
    assert kind.session_id(signed(SID, NEW)) == SID
