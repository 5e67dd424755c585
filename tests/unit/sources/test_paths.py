import pytest

from sidecar.core.session import MAX_ROLES
from sidecar.errors import CorruptRecord
from sidecar.sources.paths import Identity, Paths, identity, lookup, path_problem


@pytest.mark.parametrize("path", ["passport.user", "_auth_user_id", "warden.user.user.key.0.0", "a"])
def test_well_formed_paths_have_no_problem(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "is empty"),
        ("a..b", "empty part"),
        (".a", "empty part"),
        ("a.", "empty part"),
        ("a. b", "whitespace"),
        (".".join("x" * 17), "more than 16 parts"),
        ("x" * 129, "longer than 128"),
    ],
)
def test_malformed_paths_are_named(path: str, problem: str) -> None:
    found = path_problem(path)
    assert found is not None and problem in found


def test_a_key_holding_dots_is_reached_by_the_longest_run_of_names() -> None:
    devise = {"warden.user.user.key": [[42], "$2a$salt"], "warden": {"user": "not this"}}
    assert lookup(devise, "warden.user.user.key.0.0") == 42


def test_numbers_index_lists_and_integer_keys_of_maps() -> None:
    assert lookup({"roles": ["a", "b"]}, "roles.1") == "b"
    assert lookup({"user": {7: "php-int-key"}}, "user.7") == "php-int-key"


def test_only_ascii_digits_index_a_list() -> None:
    assert lookup({"roles": ["a", "b"]}, "roles.²") is None  # "²".isdigit() is True, int("²") raises
    assert lookup({"roles": {"²": "x"}}, "roles.²") == "x"


def test_a_path_that_names_nothing_is_none() -> None:
    assert lookup({"a": {"b": 1}}, "a.c") is None
    assert lookup({"a": [1]}, "a.5") is None
    assert lookup({"a": "text"}, "a.b") is None
    assert lookup({"a": [1]}, "a.x") is None


def test_a_session_without_a_user_is_no_identity() -> None:
    assert identity({"cookie": {"path": "/"}}, Paths("passport.user")) is None
    assert identity({"passport": {"user": ""}}, Paths("passport.user")) is None


def test_an_integer_user_id_becomes_text_and_roles_may_be_a_string_or_a_list() -> None:
    session = {"uid": 42, "mail": "a@example.com", "roles": "admin, staff  admin"}
    assert identity(session, Paths("uid", "mail", "roles")) == Identity("42", "a@example.com", ("admin", "staff"))
    listed = {"uid": "bob", "roles": ["x", "y", "x"]}
    assert identity(listed, Paths("uid", None, "roles")) == Identity("bob", None, ("x", "y"))


@pytest.mark.parametrize(
    ("session", "message"),
    [
        ({"uid": True}, "bool"),
        ({"uid": ["a"]}, "list"),
        ({"uid": 1.5}, "float"),
        ({"uid": "bob\r\nx-user-id: admin"}, "control character"),
        ({"uid": "bob", "mail": 5}, "email"),
        ({"uid": "bob", "mail": "a\nb"}, "email"),
        ({"uid": "bob", "roles": {"a": 1}}, "dict"),
        ({"uid": "bob", "roles": [1]}, "int"),
        ({"uid": "bob", "roles": ["a b"]}, "whitespace"),
        ({"uid": "bob", "roles": ["r"] * (MAX_ROLES + 1)}, f"more than {MAX_ROLES}"),
    ],
)
def test_values_that_cannot_be_an_identity_refuse_the_record(session: dict[str, object], message: str) -> None:
    with pytest.raises(CorruptRecord, match=message):
        identity(session, Paths("uid", "mail", "roles"))
