from sidecar.sources.framework import Settings
from sidecar.sources.kinds import django
from sidecar.sources.paths import Paths

KEY = "k3q9z0x7w1v2u8t4s6r5p0o9n8m7l6j5"


def test_only_djangos_session_key_alphabet_and_length_is_a_candidate() -> None:
    assert django.session_id(KEY) == KEY
    assert django.session_id(KEY.upper()) is None
    assert django.session_id(KEY[:-1]) is None
    assert django.session_id(KEY + "a") is None
    assert django.session_id("../" + KEY[3:]) is None


def test_the_key_is_the_cache_key_django_writes() -> None:
    kind = django.kind(Settings("sessionid", ":1:django.contrib.sessions.cache", "", (), Paths("_auth_user_id")))
    assert kind.store_key(KEY) == ":1:django.contrib.sessions.cache" + KEY
