"""Hiding secrets in values that get printed (``config check``, log lines, error messages)."""

from __future__ import annotations

import re

REDACTED = "<redacted>"


def redact_url(url: str) -> str:
    """Replace a password in a URL's userinfo or query string by ``<redacted>``; leave the rest as written."""
    scheme, sep, rest = url.partition("://")
    if sep:
        # The userinfo ends at the last "@", not at the first "/", "?" or "#": a password holding those unencoded
        # (u:S3cr3t/Pa55@h) would otherwise be read as a host and a path and shown. An "@" in a query only makes
        # this hide more than it must.
        userinfo, at, after = rest.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            if any(c in user for c in "/?#"):  # no userinfo after all: an "@" later on, e.g. in the query
                user = ""
            rest = f"{user}:{REDACTED}@{after}"
        url = f"{scheme}{sep}{rest}"
    return re.sub(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", rf"\g<1>{REDACTED}", url, flags=re.IGNORECASE)
