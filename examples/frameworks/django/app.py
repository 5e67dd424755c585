"""A one-file Django login app of the kind session-sidecar reads sessions from.

Sessions use the ``cache`` engine (or ``cached_db``) on Django's built-in RedisCache; ``django.contrib.auth.login``
puts ``_auth_user_id``, ``_auth_user_backend`` and ``_auth_user_hash`` in them. The browser holds ``sessionid``
(the bare session key); Redis holds ``:1:django.contrib.sessions.cache<key>``, the session dict pickled.

    GET /login?user=ID&email=E&roles=a,b   logs ID in (a numeric ID is the user's primary key), stores email/roles
    GET /whoami                            the logged-in user, or 401
    GET /logout                            django.contrib.auth.logout: the session is flushed (key deleted)

Environment: PORT (8000), REDIS_URL (redis://127.0.0.1:6379/0), SESSION_ENGINE (cache | cached_db),
SESSION_TTL (seconds, 1209600), SESSION_SAVE_EVERY_REQUEST (0 | 1), DJANGO_DB (sqlite file; a temporary one by
default), DJANGO_SECRET_KEY. Run: ``python app.py`` (migrates, then serves on 127.0.0.1 with runserver).
"""

from __future__ import annotations

import os
import sys
import tempfile

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

ENGINES = {"cache": "django.contrib.sessions.backends.cache", "cached_db": "django.contrib.sessions.backends.cached_db"}


def configure() -> None:
    engine = os.environ.get("SESSION_ENGINE", "cache")
    if engine not in ENGINES:
        raise SystemExit(f"SESSION_ENGINE must be one of {sorted(ENGINES)}, not {engine!r}")
    database = os.environ.get("DJANGO_DB") or os.path.join(tempfile.mkdtemp(prefix="django-example-"), "db.sqlite3")
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "change-me: the demo key of examples/frameworks/django"),
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database}},
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            }
        },
        SESSION_ENGINE=ENGINES[engine],
        SESSION_COOKIE_AGE=int(os.environ.get("SESSION_TTL", "1209600")),
        SESSION_SAVE_EVERY_REQUEST=os.environ.get("SESSION_SAVE_EVERY_REQUEST", "0") == "1",
        USE_TZ=True,
    )
    django.setup()


# Settings come from the environment, and Django's models can only be imported once they are configured.
configure()

from django.contrib.auth import login, logout  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402


def login_view(request: HttpRequest) -> JsonResponse:
    ident = request.GET.get("user", "")
    if not ident:
        return JsonResponse({"error": "user is required"}, status=400)
    email = request.GET.get("email", "")
    # A numeric id becomes the primary key, so the session's _auth_user_id is the id given here.
    if ident.isdigit():
        user, _ = User.objects.get_or_create(pk=int(ident), defaults={"username": f"user{ident}", "email": email})
    else:
        user, _ = User.objects.get_or_create(username=ident, defaults={"email": email})
    if user.password == "":
        user.set_unusable_password()
        user.save()
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    if email:
        request.session["email"] = email
    request.session["roles"] = [role for role in request.GET.get("roles", "").split(",") if role]
    return JsonResponse({"user": str(user.pk), "username": user.username, "session": request.session.session_key})


def whoami_view(request: HttpRequest) -> JsonResponse:
    if not request.user.is_authenticated:
        return JsonResponse({"error": "not logged in"}, status=401)
    return JsonResponse(
        {
            "user": str(request.user.pk),
            "username": request.user.get_username(),
            "email": request.session.get("email"),
            "roles": request.session.get("roles", []),
        }
    )


def logout_view(request: HttpRequest) -> JsonResponse:
    logout(request)  # session.flush(): the stored session is deleted and the cookie cleared
    return JsonResponse({"logged_out": True})


urlpatterns = [path("login", login_view), path("whoami", whoami_view), path("logout", logout_view)]


def main() -> None:
    call_command("migrate", verbosity=0, interactive=False)
    port = os.environ.get("PORT", "8000")
    call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, skip_checks=True)


if __name__ == "__main__":
    sys.exit(main())
