from sidecar.sources.framework import Settings
from sidecar.sources.kinds import rails
from sidecar.sources.paths import Paths

PUBLIC = "0123456789abcdef0123456789abcdef"


def test_the_store_key_is_racks_private_id_after_the_namespace() -> None:
    kind = rails.kind(Settings("_session_id", "rack:session:", "json", (), Paths("user_id")))
    # Rack::Session::SessionId#private_id: "2::" + Digest::SHA256.hexdigest(public_id)
    # (the digest here is sha256sum's of the 32 characters; the real Rack writer is in the integration tests)
    expected = "rack:session:2::3eb1bd439947eb762998e566ccc2e099c791118b2f40579cc4f7da2b5061b7f9"
    assert kind.store_key(PUBLIC) == expected


def test_only_a_32_hex_public_id_is_a_candidate() -> None:
    assert rails.session_id(PUBLIC) == PUBLIC
    assert rails.session_id(PUBLIC.upper()) is None
    assert rails.session_id(PUBLIC[:-1]) is None
    assert rails.session_id("2::" + PUBLIC) is None


def test_json_is_read_and_the_serializer_picks_the_reader() -> None:
    kind = rails.kind(Settings("_session_id", "rack:session:", "json", (), Paths("user_id")))
    assert kind.decode(b'{"session_id": "x", "user_id": 3}') == {"session_id": "x", "user_id": 3}
