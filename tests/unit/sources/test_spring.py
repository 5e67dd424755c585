import base64

from sidecar.sources.paths import Identity, Paths
from sidecar.sources.spring import FIELDS, session_id, with_paths

SID = "5d9f0a1e-7c2b-4e8f-9a6d-3b1c0e2f4a58"


def test_the_cookie_is_the_uuid_base64_encoded_or_as_it_is() -> None:
    assert session_id(base64.b64encode(SID.encode()).decode()) == SID  # DefaultCookieSerializer's default
    assert session_id(SID) == SID  # useBase64Encoding = false


def test_anything_but_a_uuid_is_no_candidate() -> None:
    assert session_id(base64.b64encode(b"not-a-uuid-but-thirty-six-chars-long").decode()) is None
    assert session_id(base64.b64encode(SID.upper().encode()).decode()) is None
    assert session_id(SID[:-1]) is None
    assert session_id("!" * 48) is None
    assert session_id(base64.b64encode(SID.encode()).decode()[:-1] + "*") is None


def test_only_the_fields_a_decision_needs_are_read() -> None:
    assert FIELDS == (
        "creationTime",
        "lastAccessedTime",
        "maxInactiveInterval",
        "sessionAttr:org.springframework.session.security.SpringSessionBackedSessionInformation.EXPIRED",
        "sessionAttr:SPRING_SECURITY_CONTEXT",
    )


SPRINGS = Identity("user", None, ("ROLE_USER",))
CONTEXT = {"authentication": {"principal": {"username": "user", "attributes": {"email": "u@example.com", "sub": "42"}}}}


def test_each_configured_path_replaces_only_its_own_part_of_springs_identity() -> None:
    email_only = Paths("", "authentication.principal.attributes.email")
    assert with_paths(SPRINGS, CONTEXT, email_only) == Identity("user", "u@example.com", ("ROLE_USER",))
    user_only = Paths("authentication.principal.attributes.sub")
    assert with_paths(SPRINGS, CONTEXT, user_only) == Identity("42", None, ("ROLE_USER",))
    assert with_paths(SPRINGS, CONTEXT, Paths("")) == SPRINGS


def test_a_configured_user_path_that_names_nothing_is_no_identity() -> None:
    assert with_paths(SPRINGS, CONTEXT, Paths("authentication.principal.attributes.missing")) is None
