"""Settings shared by the unit tests of the service and the adapters: the defaults of CONTRACT.md plus two routes."""

from __future__ import annotations

from sidecar.core.decision import EdgeSettings
from sidecar.core.policy import Route, RoutePolicy
from sidecar.core.tokens import KeyRing

RING = KeyRing.of([("k1", b"s" * 32)])
SETTINGS = EdgeSettings(
    cookie_name="SESSION",
    strip_upstream=True,
    user_id_header="x-user-id",
    email_header="x-user-email",
    roles_header="x-user-roles",
    session_header="x-session-id",
    strip_prefixes=("x-user-", "x-session-"),
    login_url="",
    policy=RoutePolicy.of([Route("/public", public=True), Route("/admin", roles=("admin",))]),
)
