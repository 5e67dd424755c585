"""The Java reader's allowlist and class readers, driven directly: ``check_class`` on class names, ``resolve``
on objects as the stream reader hands them over (fields, and each class's ``writeObject`` data as blocks of
primitive data and values). Whole streams through ``java.loads`` are in test_java.py."""

from __future__ import annotations

import re
import struct

import pytest

from sidecar.sources.formats import Refused
from sidecar.sources.formats.java_classes import (
    ALLOWED,
    SPRING_CLASSES,
    Block,
    JavaObject,
    check_class,
    resolve,
    shown_class,
)

AUTHORITY = "org.springframework.security.core.authority.SimpleGrantedAuthority"
SPRING_CLASS = "org.springframework.security.core.context.SecurityContextImpl"


def block(data: bytes) -> Block:
    out = Block()
    out.data += data
    return out


def written(name: str, *items: object, fields: dict[str, object] | None = None) -> JavaObject:
    """An object of ``name`` whose own ``writeObject`` wrote ``items`` (bytes become a block of primitive data)."""
    extra = [block(item) if isinstance(item, bytes) else item for item in items]
    return JavaObject(name, dict(fields or {}), {name: extra})


@pytest.mark.parametrize(
    "name",
    [AUTHORITY, "java.util.ArrayList", "java.lang.Long", "[B", "[J", "[Ljava.lang.Object;", "[Ljava.lang.String;"],
)
def test_accepted_classes_and_arrays_of_them_pass_the_check(name: str) -> None:
    check_class(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("java.lang.Object", "'java.lang.Object' is not accepted"),  # accepted as an array element only
        ("java.lang.String", "'java.lang.String' is not accepted"),  # a string is its own type code, no object
        ("java.util.PriorityQueue", "not accepted"),
        ("[Ljava.util.PriorityQueue;", "'java.util.PriorityQueue' is not accepted"),
        ("[[B", "multi-dimensional"),
        ("[Q", "not accepted"),
        ("[Ljava.lang.Long", "not accepted"),  # no closing semicolon
    ],
)
def test_other_classes_fail_the_check_naming_the_class(name: str, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        check_class(name)


def test_the_allowlist_holds_every_spring_class_and_no_gadget_class() -> None:
    assert SPRING_CLASSES <= ALLOWED
    assert (
        not {"java.util.PriorityQueue", "java.lang.reflect.Proxy", "javax.management.BadAttributeValueExpException"}
        & ALLOWED
    )


def test_a_spring_object_resolves_to_its_fields_and_class() -> None:
    assert resolve(JavaObject(AUTHORITY, {"role": "ROLE_USER"})) == {"role": "ROLE_USER", "@class": AUTHORITY}


def test_boxed_values_resolve_to_exactly_their_type() -> None:
    assert resolve(JavaObject("java.lang.Character", {"value": "x"})) == "x"
    assert resolve(JavaObject("java.lang.Boolean", {"value": False})) is False
    with pytest.raises(Refused, match=r"java\.lang\.Integer\.value is not a int"):
        resolve(JavaObject("java.lang.Integer", {"value": True}))  # a bool is no int here


def test_a_linked_list_and_a_tree_set_resolve_to_their_elements_in_stream_order() -> None:
    assert resolve(written("java.util.LinkedList", struct.pack(">i", 2), "b", "a")) == ["b", "a"]
    comparator = {"@class": "org.springframework.security.core.userdetails.User$AuthorityComparator"}
    assert resolve(written("java.util.TreeSet", comparator, struct.pack(">i", 2), "b", "a")) == ["b", "a"]


def test_a_tree_map_resolves_to_a_dict_of_its_string_keys() -> None:
    assert resolve(written("java.util.TreeMap", struct.pack(">i", 1), "k", 5)) == {"k": 5}
    with pytest.raises(Refused, match="key of type NoneType"):
        resolve(written("java.util.TreeMap", struct.pack(">i", 1), None, 5))


def test_an_instant_resolves_to_epoch_seconds_and_other_java_time_types_are_refused() -> None:
    assert resolve(written("java.time.Ser", struct.pack(">bqi", 2, 1_700_000_000, 500_000_000))) == 1_700_000_000.5
    with pytest.raises(Refused, match=r"java\.time\.Ser of type 3"):  # a LocalDate, say
        resolve(written("java.time.Ser", struct.pack(">bqi", 3, 0, 0)))


@pytest.mark.parametrize(
    "obj",
    [
        JavaObject("java.util.Collections$SingletonMap", {"k": "@class", "v": SPRING_CLASS}),
        written("java.util.HashMap", struct.pack(">ii", 16, 1), "@class", SPRING_CLASS),
        # A LinkedHashMap's pairs are its super class HashMap's writeObject data.
        JavaObject(
            "java.util.LinkedHashMap",
            {},
            {"java.util.HashMap": [block(struct.pack(">ii", 16, 2)), "a", 1, "@class", {}]},
        ),
        written("java.util.TreeMap", struct.pack(">i", 1), "@class", []),
    ],
)
def test_a_map_with_the_key_at_class_is_refused(obj: JavaObject) -> None:
    # The plain tree names an object's class with that key: a map holding it could pose as that class.
    with pytest.raises(Refused, match="with the key '@class'"):
        resolve(obj)


def test_a_class_name_is_quoted_whole_up_to_100_characters_and_cut_past_them() -> None:
    real = "org.springframework.security.web.authentication.preauth.PreAuthenticatedAuthenticationTokenX"
    with pytest.raises(Refused, match=re.escape(repr(real))):
        check_class(real)
    assert max(map(len, ALLOWED)) <= 100 and shown_class(real) == repr(real)
    for name in ["K" * 60_000, "[L" + "K" * 60_000 + ";", "[" + "K" * 60_000, "[[" + "K" * 60_000]:
        with pytest.raises(Refused, match="is not accepted") as refused:
            check_class(name)
        assert len(str(refused.value)) < 200


def test_collection_wrappers_resolve_to_what_they_wrap_and_refuse_the_wrong_kind() -> None:
    unmodifiable = "java.util.Collections$UnmodifiableRandomAccessList"
    assert resolve(JavaObject(unmodifiable, {"c": ["a"], "list": ["a"]})) == ["a"]
    with pytest.raises(Refused, match=r"\.c is not a list"):
        resolve(JavaObject(unmodifiable, {"c": {"a": 1}}))
    assert resolve(JavaObject("java.util.Collections$SingletonMap", {"k": "a", "v": 1})) == {"a": 1}
    assert resolve(JavaObject("java.util.Collections$EmptySet")) == []


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ((struct.pack(">i", 3), "a", "b"), "declares 3 values, holds 2"),
        ((struct.pack(">i", 1), "a", "b"), "more than it declares"),
        ((struct.pack(">i", -1),), "declares -1 elements"),
        ((struct.pack(">h", 1), "a"), "short of primitive data"),
        (("a",), "short of primitive data"),
        ((struct.pack(">ii", 1, 0), "a"), "lacks a value"),  # primitive data left where a value is due
    ],
)
def test_write_object_data_that_does_not_match_its_count_is_refused(items: tuple[object, ...], reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        resolve(written("java.util.LinkedList", *items))
