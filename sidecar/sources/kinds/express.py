"""express-session with connect-redis: ``sess:<id>`` holds ``JSON.stringify(req.session)``, kept for the key's TTL.

The cookie is ``s:<id>.<sig>``, percent-encoded (``s%3A...``), where ``sig`` is the unpadded base64 HMAC-SHA256 of
the id under one of the application's secrets (express-session's ``secret`` array: every one verifies, for
rotation). express-session ignores a cookie without the ``s:`` prefix, and so does this source. connect-redis
does not update ``cookie.expires`` inside the JSON on a touch, only the key's TTL: the TTL is the expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import unquote

from sidecar.sources.formats import json
from sidecar.sources.framework import Defaults, Kind, Settings
from sidecar.sources.paths import Paths

DEFAULTS = Defaults(
    cookie="connect.sid", key_prefix="sess:", serializers=(), signed="required", paths=Paths("passport.user")
)
# uid-safe's 24 random bytes are 32 base64url characters; a custom genid may make others, within these bounds.
_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


def session_id(value: str, secrets: tuple[bytes, ...]) -> str | None:
    """The id in a signed cookie value whose signature verifies under one of ``secrets``, else None."""
    try:
        text = unquote(value, errors="strict") if "%" in value else value
    except UnicodeDecodeError:
        return None
    if not text.startswith("s:"):
        return None
    sid, dot, signature = text[2:].rpartition(".")
    if not dot or _ID.fullmatch(sid) is None:
        return None
    given = signature.encode("ascii", "replace")
    verified = False
    for secret in secrets:  # every secret is tried, so the time taken does not tell which one matched
        mac = hmac.new(secret, sid.encode("ascii"), hashlib.sha256).digest()
        verified |= hmac.compare_digest(base64.b64encode(mac).rstrip(b"="), given)
    return sid if verified else None


def kind(settings: Settings) -> Kind:
    return Kind(
        name="express",
        session_id=lambda value: session_id(value, settings.secrets),
        store_key=lambda sid: settings.key_prefix + sid,
        decode=json.loads_object,
        paths=settings.paths,
    )
