"""Hiding secrets in values that get printed (``config check``, log lines, error messages)."""

from __future__ import annotations

import re

REDACTED = "<redacted>"


def redact_url(url: str) -> str:
    """Replace a password in a URL's userinfo or query string by ``<redacted>``; leave the rest as written."""
    scheme, sep, rest = url.partition("://")
    if sep:
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        netloc = rest[:end]
        userinfo, at, hostport = netloc.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            rest = f"{user}:{REDACTED}@{hostport}{rest[end:]}"
        url = f"{scheme}{sep}{rest}"
    return re.sub(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", rf"\g<1>{REDACTED}", url, flags=re.IGNORECASE)
