from sidecar.sources.framework import Settings
from sidecar.sources.kinds import php
from sidecar.sources.paths import Paths


def test_phps_session_id_alphabet_is_accepted_and_others_are_not() -> None:
    assert php.session_id("a" * 26) == "a" * 26
    assert php.session_id("abc,DEF-0123456789xyzABCD") is not None
    assert php.session_id("a" * 21) is None
    assert php.session_id("a" * 257) is None
    assert php.session_id("a" * 25 + "/") is None


def test_the_handler_format_is_the_configured_serializer() -> None:
    kind = php.kind(Settings("PHPSESSID", "PHPREDIS_SESSION:", "php", (), Paths("user_id")))
    assert kind.store_key("a" * 26) == "PHPREDIS_SESSION:" + "a" * 26
    assert kind.decode(b'user_id|s:3:"bob";') == {"user_id": "bob"}
    serialize = php.kind(Settings("PHPSESSID", "PHPREDIS_SESSION:", "php_serialize", (), Paths("user_id")))
    assert serialize.decode(b'a:1:{s:7:"user_id";i:5;}') == {"user_id": 5}
