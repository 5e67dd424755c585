"""The Set-Cookie header a login service hands the browser with a new session token."""

from __future__ import annotations

import math


def set_cookie_header(name: str, token: str, max_age: float) -> str:
    """``Secure; HttpOnly; SameSite=Lax; Path=/`` and no Domain, so a ``__Host-`` name is accepted by browsers.

    Max-Age is the absolute lifetime: idle expiry slides server-side, and a browser that dropped the cookie
    after the idle window would log out an active user.
    """
    return f"{name}={token}; Max-Age={max(0, math.floor(max_age))}; Path=/; Secure; HttpOnly; SameSite=Lax"
