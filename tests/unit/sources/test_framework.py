from sidecar.sources.framework import NO_EXPIRY_SECONDS, Settings, handle, record_of
from sidecar.sources.paths import Identity, Paths


def test_the_secrets_never_show_in_a_repr() -> None:
    settings = Settings("connect.sid", "sess:", "", (b"the-app-secret",), Paths("passport.user"))
    assert "the-app-secret" not in repr(settings)


def test_the_handle_names_a_session_without_its_id_and_differs_by_kind() -> None:
    sid = "uTYMEMJW6vqC1vi8DNY1BayOfR6LhR1V"
    assert sid not in handle("express", sid)
    assert handle("express", sid) != handle("flask", sid)
    assert handle("express", sid) == handle("express", sid)


def test_a_record_lives_as_long_as_the_key_and_carries_the_identity() -> None:
    record = record_of(Identity("42", "a@b.c", ("admin",)), "ab" * 32, 1000.0, 90.0)
    assert (record.user_id, record.email, record.roles) == ("42", "a@b.c", ("admin",))
    assert record.absolute_expires_at == 1090.0 and record.session_id == "ab" * 16
    assert NO_EXPIRY_SECONDS > 0
