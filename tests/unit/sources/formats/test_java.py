"""The Java serialization reader: real Spring Security streams read to plain values, and everything outside the
accepted subset (other classes, malformed or truncated streams, bombs, loops) refused with ``Refused``.

Real bytes: /work/shared/testdata/spring-security (see its README.md). Crafted streams are built below by a small
writer of the stream grammar, written from the protocol specification; each test says what it builds.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sidecar.sources.formats import MAX_DEPTH, MAX_INPUT_BYTES, Refused, java

SAMPLES = Path(__file__).resolve().parents[4] / ".." / "shared" / "testdata" / "spring-security"
FILES = sorted(SAMPLES.glob("*/*.serialized")) if SAMPLES.is_dir() else []
NO_SAMPLES = f"the real Spring Security samples are absent ({SAMPLES})"
SEC = "org.springframework.security."


def sample(version: str, cls: str) -> bytes:
    path = SAMPLES / version / f"{SEC}{cls}.serialized"
    if not path.is_file():
        pytest.skip(NO_SAMPLES)
    return path.read_bytes()


def each_file() -> list[object]:
    if not FILES:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_SAMPLES))]
    return [pytest.param(path, id=f"{path.parent.name}/{path.stem.rsplit('.', 1)[-1]}") for path in FILES]


# ------------------------------------------------------------------------------- a writer of crafted streams

HEADER = b"\xac\xed\x00\x05"
NULL = b"\x70"
END = b"\x78"
BASE = 0x7E0000


def mutf8(text: str) -> bytes:
    """Java's modified UTF-8 (per UTF-16 unit; NUL as two bytes), written independently of the reader."""
    out = bytearray()
    raw = text.encode("utf-16-be", "surrogatepass")
    for (unit,) in struct.iter_unpack(">H", raw):
        if 1 <= unit <= 0x7F:
            out.append(unit)
        elif unit <= 0x7FF:
            out += bytes([0xC0 | unit >> 6, 0x80 | unit & 0x3F])
        else:
            out += bytes([0xE0 | unit >> 12, 0x80 | (unit >> 6) & 0x3F, 0x80 | unit & 0x3F])
    return bytes(out)


def utf(text: str) -> bytes:
    raw = mutf8(text)
    return struct.pack(">H", len(raw)) + raw


def string(text: str) -> bytes:
    return b"\x74" + utf(text)


def ref(handle: int) -> bytes:
    return b"\x71" + struct.pack(">I", BASE + handle)


def desc(name: str, fields: list[tuple[str, str, bytes]] = (), flags: int = 0x02, sup: bytes = NULL) -> bytes:  # type: ignore[assignment]
    """A TC_CLASSDESC; ``fields`` are (type code, name, class name bytes for object fields or b"")."""
    body = b"".join(code.encode() + utf(fname) + type_name for code, fname, type_name in fields)
    return b"\x72" + utf(name) + bytes(8) + bytes([flags]) + struct.pack(">H", len(fields)) + body + END + sup


def obj(class_desc: bytes, data: bytes = b"") -> bytes:
    return b"\x73" + class_desc + data


def array(class_desc: bytes, items: list[bytes]) -> bytes:
    return b"\x75" + class_desc + struct.pack(">i", len(items)) + b"".join(items)


def long_stream(value: int) -> bytes:
    number = desc("java.lang.Number")
    return HEADER + obj(desc("java.lang.Long", [("J", "value", b"")], sup=number), struct.pack(">q", value))


OBJECTS = "[Ljava.lang.Object;"


# ------------------------------------------------------------------------------- real samples


@pytest.mark.parametrize("path", each_file())
def test_every_real_sample_reads_to_a_dict_of_its_class(path: Path) -> None:
    value = java.loads(path.read_bytes())
    assert isinstance(value, dict)
    assert value["@class"] == path.stem


def test_every_accepted_spring_class_appears_in_a_real_sample() -> None:
    # The allowlist is derived from the samples: a Spring class no sample contains would be a guess.
    if not FILES:
        pytest.skip(NO_SAMPLES)
    blob = b"".join(path.read_bytes() for path in FILES)
    guessed = {c for c in java.SPRING_CLASSES if c.encode() not in blob}
    assert guessed == {SEC + "authentication.AnonymousAuthenticationToken"}  # named by Spring's rules, see spring.py


def test_a_security_context_reads_as_its_fields_with_shared_objects_shared() -> None:
    context = java.loads(sample("7.2.x", "core.context.TransientSecurityContext"))
    assert isinstance(context, dict)
    auth = context["authentication"]
    assert auth["@class"] == SEC + "authentication.UsernamePasswordAuthenticationToken"
    assert auth["authenticated"] is True
    assert auth["credentials"] is None and auth["details"] is None
    role = {"@class": SEC + "core.authority.SimpleGrantedAuthority", "role": "ROLE_USER"}
    assert auth["authorities"] == [role]
    principal = auth["principal"]
    assert principal["@class"] == SEC + "core.userdetails.User"
    assert (principal["username"], principal["password"], principal["enabled"]) == ("user", "{noop}password", True)
    # The stream writes the authority once and refers back to it: one Python object, seen from both places.
    assert principal["authorities"][0] is auth["authorities"][0]


def test_an_oidc_user_reads_its_claims_maps_lists_and_instants() -> None:
    user = java.loads(sample("7.2.x", "oauth2.core.oidc.user.DefaultOidcUser"))
    assert isinstance(user, dict)
    assert user["nameAttributeKey"] == "sub"
    assert user["attributes"]["sub"] == "subject" and user["attributes"]["aud"] == ["client-id"]
    token = user["idToken"]
    assert isinstance(token["issuedAt"], float)
    assert token["expiresAt"] - token["issuedAt"] == pytest.approx(3600.0, abs=1e-3)
    assert token["claims"]["iat"] == token["issuedAt"]


def test_a_factor_authority_reads_its_authority_and_instant() -> None:
    authority = java.loads(sample("7.2.x", "core.authority.FactorGrantedAuthority"))
    assert isinstance(authority, dict)
    assert authority["authority"] == "profile:read" and isinstance(authority["issuedAt"], float)


@pytest.mark.parametrize("cls", ["core.context.TransientSecurityContext", "oauth2.core.oidc.user.DefaultOidcUser"])
def test_a_real_stream_cut_at_any_offset_is_refused(cls: str) -> None:
    data = sample("7.2.x", cls)
    for end in range(len(data)):
        with pytest.raises(Refused):
            java.loads(data[:end])


def test_a_real_stream_with_a_trailing_byte_is_refused() -> None:
    with pytest.raises(Refused, match="after the object"):
        java.loads(sample("7.2.x", "core.userdetails.User") + b"\x70")


# ------------------------------------------------------------------------------- classes


@pytest.mark.parametrize(
    "name",
    [
        "java.util.PriorityQueue",
        "org.apache.commons.collections.functors.InvokerTransformer",
        "org.springframework.security.core.userdetails.UserX",
        "java.lang.Object",
        "java.lang.reflect.Proxy",
    ],
)
def test_an_object_of_a_class_outside_the_allowlist_is_refused_by_name_before_its_data(name: str) -> None:
    # Only the class name is there: the refusal comes before the reader looks for the rest of the descriptor.
    stream = HEADER + b"\x73\x72" + utf(name)
    with pytest.raises(Refused, match="is not accepted") as caught:
        java.loads(stream)
    assert name in str(caught.value)


def test_a_foreign_super_class_of_an_accepted_class_is_refused() -> None:
    gadget = desc("org.apache.commons.collections.functors.InvokerTransformer")
    stream = HEADER + obj(desc(SEC + "core.authority.SimpleGrantedAuthority", sup=gadget))
    with pytest.raises(Refused, match="InvokerTransformer"):
        java.loads(stream)


def test_an_array_of_a_foreign_class_is_refused_and_of_objects_is_read() -> None:
    with pytest.raises(Refused, match="PriorityQueue"):
        java.loads(HEADER + array(desc("[Ljava.util.PriorityQueue;"), []))
    assert java.loads(HEADER + array(desc(OBJECTS), [string("a"), NULL, long_stream(7)[4:]])) == ["a", None, 7]
    assert java.loads(HEADER + array(desc("[B"), [b"\x01", b"\xff"])) == b"\x01\xff"
    assert java.loads(HEADER + b"\x75" + desc("[I") + struct.pack(">ii", 1, -5)) == [-5]
    with pytest.raises(Refused, match="multi-dimensional"):
        java.loads(HEADER + array(desc("[[B"), []))


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (HEADER + b"\x73\x7d" + struct.pack(">i", 1) + utf("java.lang.Runnable"), "proxy"),
        (HEADER + b"\x7b", "type code 0x7b"),  # TC_EXCEPTION
        (HEADER + b"\x76" + desc("java.lang.Long"), "class or class descriptor"),  # TC_CLASS
        (HEADER + desc("java.lang.Long"), "class or class descriptor"),  # a bare descriptor as the value
        (HEADER + obj(desc("java.time.Ser", flags=0x04)), "without block data"),
        (HEADER + b"\x7e" + desc("java.util.concurrent.TimeUnit", flags=0x12) + string("SECONDS"), "not accepted"),
        (HEADER + obj(desc("java.lang.Number")), "an object of class java.lang.Number"),
        (HEADER + obj(desc(SEC + "core.userdetails.User", flags=0x00)), "not serializable"),
        (HEADER + b"\x73\x72" + utf(SEC + "core.userdetails.User") + bytes(9) + b"\x00\x00\x77\x00" + END, "annotat"),
        (HEADER + obj(desc(SEC + "core.userdetails.User", [("Q", "x", b"")])), "field type code"),
        (HEADER + obj(desc(SEC + "core.userdetails.User", [("I", "@class", b"")])), "field name"),
        (HEADER + obj(desc(SEC + "core.userdetails.User", [("I", "a", b""), ("Z", "a", b"")])), "field name"),
        (b"\xac\xed\x00\x04" + NULL, "header"),
        (b"", "header"),
        (HEADER, "bytes declared"),
    ],
)
def test_constructs_outside_the_subset_are_refused(stream: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        java.loads(stream)


# ------------------------------------------------------------------------------- values


def test_boxed_values_become_plain_numbers_and_mismatched_ones_are_refused() -> None:
    assert java.loads(long_stream(1_700_000_000_000)) == 1_700_000_000_000
    assert java.loads(long_stream(-1)) == -1
    number = desc("java.lang.Number")
    integer = desc("java.lang.Integer", [("I", "value", b"")], sup=number)
    assert java.loads(HEADER + obj(integer, struct.pack(">i", -1800))) == -1800
    boolean = desc("java.lang.Boolean", [("Z", "value", b"")])
    assert java.loads(HEADER + obj(boolean, b"\x01")) is True
    # A Long whose descriptor says its value is a boolean is no Long.
    with pytest.raises(Refused, match=r"java\.lang\.Long\.value"):
        java.loads(HEADER + obj(desc("java.lang.Long", [("Z", "value", b"")], sup=number), b"\x01"))


def test_primitive_fields_are_read_before_object_fields_whatever_the_descriptor_order() -> None:
    # Java writes all primitives first; a descriptor listing an object field first must not change that.
    fields = [("L", "username", string("Ljava/lang/String;")), ("Z", "enabled", b"")]
    stream = HEADER + obj(desc(SEC + "core.userdetails.User", fields), b"\x01" + string("alice"))
    assert java.loads(stream) == {"@class": SEC + "core.userdetails.User", "enabled": True, "username": "alice"}


@pytest.mark.parametrize(
    "text", ["plain", "", "nul\x00inside", "é and ß", "\u20ac", "\U0001f600 astral", "\uffff", "\u0800"]
)
def test_modified_utf8_strings_decode_as_java_writes_them(text: str) -> None:
    assert java.loads(HEADER + string(text)) == text
    assert java.loads(HEADER + b"\x7c" + struct.pack(">q", len(mutf8(text))) + mutf8(text)) == text


def test_modified_utf8_nul_is_two_bytes_and_a_supplementary_character_a_surrogate_pair() -> None:
    assert mutf8("\x00") == b"\xc0\x80"
    assert mutf8("\U0001f600") == b"\xed\xa0\xbd\xed\xb8\x80"


@pytest.mark.parametrize(
    "raw",
    [
        b"\xed\xa0\xbd",  # a lone high surrogate
        b"\xed\xb8\x80x",  # a lone low surrogate
        b"\xf0\x9f\x98\x80",  # standard UTF-8's four-byte form, which Java's readUTF rejects
        b"\xc3",  # cut in the middle of a character
        b"\xe2\x82",
        b"\xc3\x28",  # a continuation byte that is not one
        b"\xff",
    ],
)
def test_malformed_modified_utf8_is_refused(raw: bytes) -> None:
    with pytest.raises(Refused):
        java.loads(HEADER + b"\x74" + struct.pack(">H", len(raw)) + raw)


def test_a_char_field_that_is_half_a_surrogate_pair_is_refused() -> None:
    character = desc("java.lang.Character", [("C", "value", b"")])
    assert java.loads(HEADER + obj(character, b"\x00A")) == "A"
    with pytest.raises(Refused, match="surrogate"):
        java.loads(HEADER + obj(character, b"\xd8\x00"))


def test_a_reset_is_accepted_before_the_object_only() -> None:
    assert java.loads(HEADER + b"\x79\x79" + string("x")) == "x"
    with pytest.raises(Refused, match="reset"):
        java.loads(HEADER + array(desc(OBJECTS), [b"\x79" + string("x")]))


# ------------------------------------------------------------------------------- bounds


def test_input_over_the_size_bound_is_refused_before_reading() -> None:
    with pytest.raises(Refused, match="over"):
        java.loads(HEADER + string("x") + bytes(MAX_INPUT_BYTES))


def test_nesting_deeper_than_the_bound_is_refused() -> None:
    def nested(levels: int) -> bytes:
        # The first array's descriptor gets handle 0; the inner arrays refer back to it.
        inner = NULL
        for _ in range(levels - 1):
            inner = b"\x75" + ref(0) + struct.pack(">i", 1) + inner
        return HEADER + b"\x75" + desc(OBJECTS) + struct.pack(">i", 1) + inner

    assert java.loads(nested(MAX_DEPTH - 1)) is not None
    with pytest.raises(Refused, match="deeper"):
        java.loads(nested(MAX_DEPTH + 1))
    with pytest.raises(Refused, match="deeper"):
        java.loads(nested(5000))  # far past Python's recursion limit: refused, never a RecursionError


def test_a_reference_that_nests_a_deep_value_deeper_than_the_bound_is_refused() -> None:
    # [deep, [[[...[ref deep]...]]]]: each place is within the bound, the tree a consumer walks is not.
    deep = NULL
    for _ in range(MAX_DEPTH - 4):
        deep = b"\x75" + ref(0) + struct.pack(">i", 1) + deep
    # Handles: 0 the descriptor, 1 the outer array, 2 the first inner array.
    wrapper = NULL
    for _ in range(6):
        wrapper = b"\x75" + ref(0) + struct.pack(">i", 1) + (wrapper if wrapper != NULL else ref(2))
    stream = HEADER + b"\x75" + desc(OBJECTS) + struct.pack(">i", 2) + deep + wrapper
    with pytest.raises(Refused, match="a reference nests deeper"):
        java.loads(stream)


def test_shared_references_that_would_expand_past_the_element_bound_are_refused() -> None:
    # A_1 = [null, null], A_k = [ref A_(k-1), ref A_(k-1)]: 25 small arrays, 2^25 leaves to whoever walks them.
    items = [b"\x75" + ref(0) + struct.pack(">i", 2) + NULL + NULL]
    for k in range(2, 26):
        previous = 1 + (k - 1)  # handle 0 is the descriptor, 1 the outer array, then A_1 = 2, A_2 = 3, ...
        items.append(b"\x75" + ref(0) + struct.pack(">i", 2) + ref(previous) + ref(previous))
    stream = HEADER + b"\x75" + desc(OBJECTS) + struct.pack(">i", len(items)) + b"".join(items)
    with pytest.raises(Refused, match="elements"):
        java.loads(stream)


def test_a_reference_to_an_object_still_being_read_is_a_refused_cycle() -> None:
    # An array holding itself (handle 1: the array, after its descriptor's handle 0).
    with pytest.raises(Refused, match="cycle"):
        java.loads(HEADER + array(desc(OBJECTS), [ref(1)]))


def test_a_class_chain_that_loops_is_refused() -> None:
    # A descriptor whose super class is a reference to itself (handle 0).
    with pytest.raises(Refused, match="loops"):
        java.loads(HEADER + obj(desc(SEC + "core.userdetails.User", sup=ref(0))))


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (HEADER + ref(0), "unknown handle"),
        (HEADER + ref(-BASE), "unknown handle"),
        (HEADER + array(desc(OBJECTS), [ref(0)]), "class descriptor where a value"),
        (HEADER + b"\x7c" + struct.pack(">q", 2**62) + b"abc", "bytes declared"),
        (HEADER + b"\x7c\xff" + bytes(7), "bytes declared"),  # a negative long length
        (HEADER + b"\x74\xff\xff" + b"abc", "bytes declared"),
        (HEADER + b"\x75" + desc(OBJECTS) + struct.pack(">i", 2**31 - 1) + NULL, "elements with"),
        (HEADER + b"\x75" + desc("[J") + struct.pack(">i", 2**31 - 1), "bytes declared"),
        (HEADER + b"\x75" + desc("[B") + struct.pack(">i", -1), "bytes declared"),
        (HEADER + b"\x73\x72" + utf(SEC + "core.userdetails.User") + bytes(8) + b"\x02\xff\xff", "bytes declared"),
    ],
)
def test_references_and_lengths_beyond_the_stream_are_refused(stream: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        java.loads(stream)


# ------------------------------------------------------------------------------- collections


def _hash_map(entries: bytes, size: int) -> bytes:
    # java.util.HashMap as its writeObject writes it: loadFactor and threshold, then buckets, size, the pairs.
    fields = [("F", "loadFactor", b""), ("I", "threshold", b"")]
    block = struct.pack(">ii", 16, size)
    return obj(desc("java.util.HashMap", fields, flags=0x03), struct.pack(">fi", 0.75, 12) + b"\x77\x08" + block) + (
        entries + END
    )


def test_a_map_reads_to_a_dict_and_a_key_that_is_not_a_string_is_refused() -> None:
    assert java.loads(HEADER + _hash_map(string("k") + string("v"), 1)) == {"k": "v"}
    with pytest.raises(Refused, match="key of type int"):
        java.loads(HEADER + _hash_map(long_stream(1)[4:] + string("v"), 1))


def test_a_map_with_the_key_at_class_is_refused_so_it_cannot_pose_as_a_spring_object() -> None:
    true = obj(desc("java.lang.Boolean", [("Z", "value", b"")]), b"\x01")
    token = _hash_map(
        string("@class")
        + string(SEC + "authentication.UsernamePasswordAuthenticationToken")
        + string("authenticated")
        + true
        + string("principal")
        + string("admin")
        + string("authorities")
        + obj(desc("java.util.Collections$EmptyList")),
        4,
    )
    posing = HEADER + _hash_map(string("@class") + string(SEC + "core.context.SecurityContextImpl"), 1)
    for stream in [posing, HEADER + _hash_map(string("authentication") + token, 1)]:
        with pytest.raises(Refused, match=r"java\.util\.HashMap with the key '@class'"):
            java.loads(stream)
    with pytest.raises(Refused, match="key '@class'"):  # its value a map: membership tests must never see it
        java.loads(HEADER + _hash_map(string("@class") + _hash_map(b"", 0), 1))


def test_a_refusal_quotes_a_60_kb_class_or_field_name_cut_short() -> None:
    name = "K" * 60_000
    with pytest.raises(Refused, match="is not accepted") as refused:
        java.loads(HEADER + b"\x73\x72" + utf(name))
    assert len(str(refused.value)) < 200
    twice = name[:30_000]  # a field name given twice, in the 64 KiB bound
    long_field = desc(SEC + "core.userdetails.User", [("I", twice, b""), ("Z", twice, b"")])
    with pytest.raises(Refused, match="field name") as refused:
        java.loads(HEADER + obj(long_field))
    assert len(str(refused.value)) < 200


@pytest.mark.parametrize(("entries", "size"), [(string("k"), 1), (string("k") + string("v"), 2), (b"", -1)])
def test_a_map_whose_declared_size_does_not_match_its_entries_is_refused(entries: bytes, size: int) -> None:
    with pytest.raises(Refused):
        java.loads(HEADER + _hash_map(entries, size))


def test_a_collection_without_its_write_object_data_is_refused() -> None:
    with pytest.raises(Refused, match="writeObject"):
        java.loads(HEADER + obj(desc("java.util.ArrayList", [("I", "size", b"")]), struct.pack(">i", 0)))


def test_write_object_data_of_a_plain_class_is_refused() -> None:
    # A Spring class read field by field has no writeObject data: extra values would be ignored, so are refused.
    stream = HEADER + obj(desc(SEC + "core.authority.SimpleGrantedAuthority", flags=0x03), string("x") + END)
    with pytest.raises(Refused, match="unexpected writeObject data"):
        java.loads(stream)


def test_a_list_element_that_is_a_byte_array_is_not_mistaken_for_primitive_data() -> None:
    # ArrayList: size field, then its writeObject's capacity (block data) and the elements; here a byte[].
    stream = obj(desc("java.util.ArrayList", [("I", "size", b"")], flags=0x03), struct.pack(">i", 1))
    stream += b"\x77\x04" + struct.pack(">i", 10) + array(desc("[B"), [b"\x01"]) + END
    assert java.loads(HEADER + stream) == [b"\x01"]


def test_primitive_data_split_across_blocks_reads_as_one() -> None:
    # HashSet's capacity, load factor and size, written in a short block and a long one (Java may split anywhere).
    data = b"\x77\x04" + struct.pack(">i", 16) + b"\x7a" + struct.pack(">i", 8) + struct.pack(">fi", 0.75, 2)
    stream = obj(desc("java.util.HashSet", flags=0x03), data + string("a") + string("b") + END)
    assert java.loads(HEADER + stream) == ["a", "b"]
    with pytest.raises(Refused, match="short of primitive data"):
        java.loads(HEADER + obj(desc("java.util.HashSet", flags=0x03), b"\x77\x04" + bytes(4) + END))
