"""A one-file Flask login app of the kind session-sidecar reads sessions from.

Flask-Session keeps the session server-side in Redis (``session:<sid>``, msgpack by default) and Flask-Login's
``login_user`` puts ``_user_id`` in it. The browser holds ``session`` = the sid, or ``<sid>.<signature>`` with
SESSION_USE_SIGNER.

    GET /login?user=ID&email=E&roles=a,b   logs ID in (login_user, after a new session id), stores email/roles
    GET /whoami                            the logged-in user, or 401
    GET /logout                            logout_user and session.clear(): the stored session is deleted

Environment: PORT (5000), REDIS_URL (redis://127.0.0.1:6379/0), SESSION_TTL (seconds, 2678400),
SESSION_USE_SIGNER (0 | 1), SESSION_SERIALIZATION_FORMAT (msgpack | json), SESSION_KEY_PREFIX (session:),
SESSION_REFRESH_EACH_REQUEST (1 | 0), FLASK_SECRET_KEY. Run: ``python app.py`` (serves on 127.0.0.1).
"""

from __future__ import annotations

import os
from datetime import timedelta

import redis
from flask import Flask, jsonify, request, session
from flask.typing import ResponseReturnValue
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_session import Session


class User(UserMixin):
    """The demo has no user database: the id given to /login is the user."""

    def __init__(self, user_id: str) -> None:
        self.id = user_id


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=os.environ.get("FLASK_SECRET_KEY", "change-me: the demo key of examples/frameworks/flask"),
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")),
        SESSION_KEY_PREFIX=os.environ.get("SESSION_KEY_PREFIX", "session:"),
        SESSION_USE_SIGNER=os.environ.get("SESSION_USE_SIGNER", "0") == "1",
        SESSION_SERIALIZATION_FORMAT=os.environ.get("SESSION_SERIALIZATION_FORMAT", "msgpack"),
        SESSION_REFRESH_EACH_REQUEST=os.environ.get("SESSION_REFRESH_EACH_REQUEST", "1") == "1",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=int(os.environ.get("SESSION_TTL", "2678400"))),
    )
    Session(app)
    login_manager = LoginManager(app)
    login_manager.user_loader(User)

    @app.get("/login")
    def login() -> ResponseReturnValue:
        ident = request.args.get("user", "")
        if not ident:
            return jsonify(error="user is required"), 400
        # A new session id at login (no fixation): Flask-Session's regenerate deletes the old stored session.
        app.session_interface.regenerate(session)  # type: ignore[attr-defined]
        login_user(User(ident))
        if request.args.get("email"):
            session["email"] = request.args["email"]
        session["roles"] = [role for role in request.args.get("roles", "").split(",") if role]
        return jsonify(user=ident, session=session.sid)  # type: ignore[attr-defined]

    @app.get("/whoami")
    def whoami() -> ResponseReturnValue:
        if not current_user.is_authenticated:
            return jsonify(error="not logged in"), 401
        return jsonify(user=current_user.get_id(), email=session.get("email"), roles=session.get("roles", []))

    @app.get("/logout")
    def logout() -> ResponseReturnValue:
        logout_user()
        session.clear()  # an empty, modified session: Flask-Session deletes the key and the cookie
        return jsonify(logged_out=True)

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")), use_reloader=False)
