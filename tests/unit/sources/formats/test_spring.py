"""Spring Session hashes and Spring Security contexts: the times, the context and who it says is logged in, read
the same from the JDK and the JSON serializer, and refused when they are not what Spring writes.

Real bytes: the security contexts and authentications in /work/shared/testdata/spring-security (README.md there).
Built here: the Long/Integer values of a session hash (a tiny writer of exactly those two classes, below), a few
trees wrapping a real object into a context, and the JSON forms, written by hand after Spring Security's own
Jackson mixin tests (``SimpleGrantedAuthorityMixinTests``, ``UserDeserializerTests``,
``OAuth2AuthenticationTokenMixinTests``) and GenericJackson2JsonRedisSerializer's default typing ("@class").
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.sources.formats import Refused, java
from sidecar.sources.formats.spring import (
    SpringIdentity,
    SpringSession,
    expires_at_ms,
    identity,
    loads_json,
    read_session,
)
from tests.support.spring_session import HEADER, NO_SAMPLES, SAMPLES, SEC, VERSIONS, jdk_int, jdk_long, sample, utf

CONTEXT = SEC + "core.context.SecurityContextImpl"
AUTHORITY = SEC + "core.authority.SimpleGrantedAuthority"


def in_context(authentication: object) -> dict[str, object]:
    """A built SecurityContextImpl tree around a real authentication (what Spring Session would store)."""
    return {"@class": CONTEXT, "authentication": authentication}


def rename(stream: bytes, old: str, new: str) -> bytes:
    """The stream with one class renamed in its descriptor (the name's length prefix rewritten with it)."""
    assert stream.count(utf(old)) == 1
    return stream.replace(utf(old), utf(new))


T0, T1 = 1_700_000_000_000, 1_700_000_600_000


def jdk_hash(context: bytes, max_inactive: int = 1800) -> dict[bytes, bytes]:
    return {
        b"creationTime": jdk_long(T0),
        b"lastAccessedTime": jdk_long(T1),
        b"maxInactiveInterval": jdk_int(max_inactive),
        b"sessionAttr:SPRING_SECURITY_CONTEXT": context,
    }


# ------------------------------------------------------------------------------- hand-written JSON


def authority_json(role: str) -> dict[str, object]:
    return {"@class": AUTHORITY, "authority": role}


USER_JSON: dict[str, Any] = {
    "@class": SEC + "core.userdetails.User",
    "username": "user",
    "password": "{noop}password",
    "accountNonExpired": True,
    "accountNonLocked": True,
    "credentialsNonExpired": True,
    "enabled": True,
    "authorities": ["java.util.Collections$UnmodifiableSet", [authority_json("ROLE_USER")]],
}
# The JSON of the authentication in the real TransientSecurityContext sample, in a SecurityContextImpl.
CONTEXT_JSON: dict[str, Any] = {
    "@class": CONTEXT,
    "authentication": {
        "@class": SEC + "authentication.UsernamePasswordAuthenticationToken",
        "principal": USER_JSON,
        "credentials": None,
        "authenticated": True,
        "details": None,
        "authorities": ["java.util.Collections$UnmodifiableRandomAccessList", [authority_json("ROLE_USER")]],
    },
}
DETAILS_JSON = {
    "@class": SEC + "web.authentication.WebAuthenticationDetails",
    "remoteAddress": "remote",
    "sessionId": "sessionId",
}
OAUTH2_JSON: dict[str, Any] = {
    "@class": CONTEXT,
    "authentication": {
        "@class": SEC + "oauth2.client.authentication.OAuth2AuthenticationToken",
        "principal": {
            "@class": SEC + "oauth2.core.user.DefaultOAuth2User",
            "authorities": [
                "java.util.Collections$UnmodifiableSet",
                [
                    {
                        "@class": SEC + "oauth2.core.user.OAuth2UserAuthority",
                        "authority": "OAUTH2_USER",
                        "attributes": {"@class": "java.util.Collections$UnmodifiableMap", "username": "user"},
                    },
                    authority_json("SCOPE_read"),
                    authority_json("SCOPE_write"),
                ],
            ],
            "attributes": {"@class": "java.util.Collections$UnmodifiableMap", "username": "user"},
            "nameAttributeKey": "username",
        },
        "authorities": [
            "java.util.Collections$UnmodifiableRandomAccessList",
            [
                {
                    "@class": SEC + "oauth2.core.user.OAuth2UserAuthority",
                    "authority": "OAUTH2_USER",
                    "attributes": {"@class": "java.util.Collections$UnmodifiableMap", "username": "user"},
                },
                authority_json("SCOPE_read"),
                authority_json("SCOPE_write"),
            ],
        ],
        "authorizedClientRegistrationId": "registration-id",
        "details": DETAILS_JSON,
    },
}


def oidc_json(*, email: str | None, name_key: str = "sub") -> dict[str, object]:
    id_token = {
        "@class": SEC + "oauth2.core.oidc.OidcIdToken",
        "tokenValue": "id-token",
        "issuedAt": 1786399529.989254,
        "expiresAt": 1786403129.989254,
        "claims": {
            "@class": "java.util.Collections$UnmodifiableMap",
            "iat": ["java.time.Instant", 1786399529.989254],
            "exp": ["java.time.Instant", 1786403129.989254],
            "sub": "subject",
            "iss": "http://localhost/issuer",
            "aud": ["java.util.Collections$UnmodifiableSet", ["client-id"]],
            "azp": "client",
        },
    }
    user_claims: dict[str, object] = {"@class": "java.util.Collections$UnmodifiableMap", "sub": "userinfo-subject"}
    user_claims["name"] = "full name"
    if email is not None:
        user_claims["email"] = email
    user_info = {"@class": SEC + "oauth2.core.oidc.OidcUserInfo", "claims": user_claims}
    authorities = [
        {"@class": SEC + "oauth2.core.oidc.user.OidcUserAuthority", "authority": "OIDC_USER", "idToken": id_token},
        authority_json("SCOPE_read"),
    ]
    return {
        "@class": CONTEXT,
        "authentication": {
            "@class": SEC + "oauth2.client.authentication.OAuth2AuthenticationToken",
            "principal": {
                "@class": SEC + "oauth2.core.oidc.user.DefaultOidcUser",
                "authorities": ["java.util.Collections$UnmodifiableSet", authorities],
                "idToken": id_token,
                "userInfo": user_info,
                "nameAttributeKey": name_key,
            },
            "authorities": ["java.util.Collections$UnmodifiableRandomAccessList", authorities],
            "authorizedClientRegistrationId": "registration-id",
            "details": None,
        },
    }


def as_json(tree: object) -> bytes:
    return json.dumps(tree).encode()


def json_hash(context: bytes, max_inactive: int = 1800) -> dict[bytes, bytes]:
    # GenericJackson2JsonRedisSerializer writes a Long or an Integer as a plain JSON number (a final class).
    return {
        b"creationTime": str(T0).encode(),
        b"lastAccessedTime": str(T1).encode(),
        b"maxInactiveInterval": str(max_inactive).encode(),
        b"sessionAttr:SPRING_SECURITY_CONTEXT": context,
    }


# ------------------------------------------------------------------------------- real samples

USER = SpringIdentity("user", None, ("ROLE_USER",))
OAUTH2 = SpringIdentity("user", None, ("OAUTH2_USER", "SCOPE_read", "SCOPE_write"))
# What each real sample says, wrapped in a context when it is an Authentication (from the README and the bytes:
# the 6.2.x generator built an authenticated UsernamePasswordAuthenticationToken without authorities, and the
# 6.4.x one an authenticated TestingAuthenticationToken).
EXPECTED: dict[str, object] = {
    "core.context.SecurityContextImpl": None,
    "core.context.TransientSecurityContext": USER,
    "authentication.UsernamePasswordAuthenticationToken": {"6.2.x": SpringIdentity("user", None, ())},
    "authentication.RememberMeAuthenticationToken": USER,
    "authentication.TestingAuthenticationToken": {"6.4.x": SpringIdentity("username", None, ())},
    "oauth2.client.authentication.OAuth2AuthenticationToken": OAUTH2,
    "web.authentication.preauth.PreAuthenticatedAuthenticationToken": USER,
}
NOT_A_CONTEXT = [
    "core.userdetails.User",
    "core.authority.SimpleGrantedAuthority",
    "core.authority.FactorGrantedAuthority",
    "oauth2.core.user.DefaultOAuth2User",
    "oauth2.core.oidc.user.DefaultOidcUser",
    "web.authentication.WebAuthenticationDetails",
]


def every_sample() -> list[object]:
    if not VERSIONS:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=NO_SAMPLES))]
    return [
        pytest.param(version, path.stem.removeprefix(SEC), id=f"{version}/{path.stem.rsplit('.', 1)[-1]}")
        for version in VERSIONS
        for path in sorted((SAMPLES / version).glob("*.serialized"))
    ]


@pytest.mark.parametrize(("version", "cls"), every_sample())
def test_every_real_sample_gives_the_identity_spring_would_or_is_refused_as_no_context(version: str, cls: str) -> None:
    value = java.loads(sample(version, cls))
    if cls in NOT_A_CONTEXT:
        with pytest.raises(Refused, match="is not a security context"):
            identity(value)
        return
    expected = EXPECTED[cls]
    if isinstance(expected, dict):
        expected = expected.get(version)
    tree = value if cls.startswith("core.context.") else in_context(value)
    assert identity(tree) == expected


def test_a_session_hash_around_a_real_context_reads_its_times_and_user() -> None:
    real = sample("7.2.x", "core.context.TransientSecurityContext")
    # Another attribute holding a gadget class: never parsed, so it cannot matter.
    gadget = HEADER + b"\x73\x72" + utf("org.apache.commons.collections.functors.InvokerTransformer")
    session = read_session({**jdk_hash(real), b"sessionAttr:cart": gadget}, "jdk")
    assert (session.creation_ms, session.last_accessed_ms, session.max_inactive_seconds) == (T0, T1, 1800)
    assert expires_at_ms(session) == T1 + 1_800_000
    assert identity(session.context) == USER


def test_a_negative_max_inactive_interval_never_expires() -> None:
    session = read_session(jdk_hash(sample("7.2.x", "core.context.SecurityContextImpl"), max_inactive=-1), "jdk")
    assert session.max_inactive_seconds == -1
    assert expires_at_ms(session) is None
    assert identity(session.context) is None


def test_expiry_is_last_access_plus_the_interval() -> None:
    assert expires_at_ms(SpringSession(0, 5_000, 0, None)) == 5_000
    assert expires_at_ms(SpringSession(0, 5_000, 60, None)) == 65_000


def test_a_session_without_a_context_or_with_a_null_one_has_no_context() -> None:
    fields = jdk_hash(b"")
    assert read_session(fields, "jdk").context is None  # RedisSerializer's null: an empty value
    del fields[b"sessionAttr:SPRING_SECURITY_CONTEXT"]
    assert read_session(fields, "jdk").context is None


def test_the_context_attribute_name_is_configurable() -> None:
    fields = jdk_hash(b"")
    fields[b"sessionAttr:CTX"] = sample("7.2.x", "core.context.TransientSecurityContext")
    assert identity(read_session(fields, "jdk", context_attribute="CTX").context) == USER


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        (b"creationTime", None, "creationTime is NoneType"),
        (b"lastAccessedTime", b"", "lastAccessedTime is NoneType"),
        (b"maxInactiveInterval", HEADER + b"\x74" + utf("1800"), "maxInactiveInterval is str"),
        (b"creationTime", b"\x00\x00\x01\x8b", "header"),  # not a Java stream at all
        (b"maxInactiveInterval", jdk_long(2**31), "out of range"),
        (b"sessionAttr:SPRING_SECURITY_CONTEXT", HEADER + b"\x73\x72" + utf("java.util.PriorityQueue"), "Priority"),
    ],
)
def test_a_hash_spring_could_not_read_is_refused(field: bytes, value: bytes | None, reason: str) -> None:
    fields = jdk_hash(sample("7.2.x", "core.context.TransientSecurityContext"))
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    with pytest.raises(Refused, match=reason):
        read_session(fields, "jdk")


def test_an_unknown_serializer_is_refused() -> None:
    with pytest.raises(Refused, match="serializer"):
        read_session(json_hash(b""), "xml")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- identity rules


def _remember_me() -> bytes:
    return sample("7.2.x", "authentication.RememberMeAuthenticationToken")


def test_an_anonymous_token_is_no_identity_even_when_authenticated() -> None:
    # Built: the real RememberMeAuthenticationToken (fields keyHash and principal, as an anonymous token has)
    # renamed to AnonymousAuthenticationToken. The same bytes before renaming name the user.
    real = _remember_me()
    assert identity(in_context(java.loads(real))) == USER
    old, new = "authentication.RememberMeAuthenticationToken", "authentication.AnonymousAuthenticationToken"
    renamed = rename(real, SEC + old, SEC + new)
    anonymous = java.loads(renamed)
    assert isinstance(anonymous, dict) and anonymous["authenticated"] is True
    assert identity(in_context(anonymous)) is None


def test_an_oidc_user_is_named_by_its_name_attribute() -> None:
    oidc = java.loads(sample("7.2.x", "oauth2.core.oidc.user.DefaultOidcUser"))
    assert isinstance(oidc, dict)
    token = {"@class": SEC + "oauth2.client.authentication.OAuth2AuthenticationToken", "authenticated": True}
    token |= {"principal": oidc, "authorities": oidc["authorities"]}
    assert identity(in_context(token)) == SpringIdentity("subject", None, ("OIDC_USER", "SCOPE_read", "SCOPE_write"))
    oidc["nameAttributeKey"] = "name"
    assert identity(in_context(token)).name == "full name"  # type: ignore[union-attr]
    oidc["attributes"] = {**oidc["attributes"], "email": "who@example.com"}
    assert identity(in_context(token)).email == "who@example.com"  # type: ignore[union-attr]
    oidc["attributes"]["name"] = 42  # getName() is the attribute's toString()
    assert identity(in_context(token)).name == "42"  # type: ignore[union-attr]


def _with(path: list[str], value: object) -> dict[str, object]:
    tree = java.loads(sample("7.2.x", "core.context.TransientSecurityContext"))
    node = tree
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    return tree  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        (["authentication", "principal"], {"@class": SEC + "core.authority.SimpleGrantedAuthority"}, "principal"),
        (["authentication", "principal"], None, "principal of null"),
        (["authentication", "principal"], "", "without a name"),
        (["authentication", "principal", "username"], 7, "without a name"),
        (["authentication", "authorities"], None, "authorities of null"),
        (["authentication", "authorities"], ["ROLE_ADMIN"], "an authority of a str"),
        (["authentication", "authorities"], [{"@class": AUTHORITY, "role": 1}], "without its authority"),
        (["authentication", "authorities"], [{"@class": SEC + "x.Evil", "authority": "ROLE_ADMIN"}], "authority"),
        (["authentication"], "token", "authentication of a str"),
        (["@class"], SEC + "core.userdetails.User", "not a security context"),
    ],
)
def test_a_context_whose_user_cannot_be_told_is_refused(path: list[str], value: object, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        identity(_with(path, value))


@pytest.mark.parametrize("flag", [False, None, 1, "true"])
def test_only_authenticated_true_is_a_logged_in_user(flag: object) -> None:
    assert identity(_with(["authentication", "authenticated"], flag)) is None
    assert identity(_with(["authentication", "authenticated"], True)) == USER


TOKEN_CLASSES = [
    "authentication.UsernamePasswordAuthenticationToken",
    "authentication.RememberMeAuthenticationToken",
    "authentication.TestingAuthenticationToken",
    "web.authentication.preauth.PreAuthenticatedAuthenticationToken",
    "oauth2.client.authentication.OAuth2AuthenticationToken",
]


def token(cls: object, **fields: object) -> dict[str, object]:
    """An authentication as read, of ``cls``, naming ``admin`` with one authority."""
    base = {"@class": cls, "authenticated": True, "principal": "admin", "authorities": [ADMIN_AUTHORITY]}
    return {**base, **fields}


ADMIN_AUTHORITY = {"@class": AUTHORITY, "role": "ROLE_ADMIN"}


@pytest.mark.parametrize("cls", TOKEN_CLASSES)
def test_each_authentication_token_class_names_its_user(cls: str) -> None:
    assert identity(in_context(token(SEC + cls))) == SpringIdentity("admin", None, ("ROLE_ADMIN",))


@pytest.mark.parametrize(
    "cls",
    [
        SEC + "authentication.AbstractAuthenticationToken",  # abstract: never the class of an object Spring wrote
        SEC + "core.userdetails.User",
        SEC + "core.context.SecurityContextImpl",
        "java.util.HashMap",
        "x.Evil",
        None,
        [],
        {},
        1,
    ],
)
def test_an_authentication_of_a_class_that_is_no_token_is_refused(cls: object) -> None:
    with pytest.raises(Refused, match="an authentication of"):
        identity(in_context(token(cls)))


@pytest.mark.parametrize(
    "context",
    [
        {"@class": []},
        {"@class": {}},
        {"@class": {"@class": CONTEXT}},
        in_context(token([SEC + TOKEN_CLASSES[0]])),
        in_context(token(SEC + TOKEN_CLASSES[0], principal={"@class": [], "username": "admin"})),
        in_context(token(SEC + TOKEN_CLASSES[0], principal={"@class": {}, "attributes": {}})),
        in_context(token(SEC + TOKEN_CLASSES[0], authorities=[{"@class": [AUTHORITY], "role": "ROLE_ADMIN"}])),
        in_context(token(SEC + TOKEN_CLASSES[0], authorities=[{"@class": {}, "role": "ROLE_ADMIN"}])),
    ],
)
def test_a_class_name_that_is_no_string_is_refused_not_a_type_error(context: dict[str, object]) -> None:
    # Only a JDK map could hold such a "@class" (java_classes now refuses the key): identity() refuses it anyway.
    with pytest.raises(Refused):
        identity(context)


def test_an_anonymous_token_of_any_content_is_no_identity() -> None:
    anonymous = SEC + "authentication.AnonymousAuthenticationToken"
    assert identity(in_context(token(anonymous))) is None
    assert identity(in_context(token(anonymous, principal=None, authorities=None))) is None


def test_a_refusal_quotes_a_long_class_name_cut_short() -> None:
    long_name = "K" * 60_000
    for context in [{"@class": long_name}, in_context(token(long_name))]:
        with pytest.raises(Refused, match="KKK") as refused:
            identity(context)
        assert len(str(refused.value)) < 200
    for text in [b'{"@class": "' + long_name.encode() + b'"}', b'["' + long_name.encode() + b'", 1]']:
        with pytest.raises(Refused, match="KKK") as refused:
            loads_json(text)
        assert len(str(refused.value)) < 200


# ------------------------------------------------------------------------------- the JSON serializer


def test_json_normalizes_to_the_same_tree_as_the_jdk_stream() -> None:
    jdk = java.loads(sample("7.2.x", "core.context.TransientSecurityContext"))
    assert isinstance(jdk, dict)
    from_json = loads_json(as_json(CONTEXT_JSON))
    assert isinstance(from_json, dict)
    assert from_json["authentication"] == jdk["authentication"]
    assert from_json["authentication"]["principal"]["username"] == "user"


def test_a_json_session_hash_reads_like_the_jdk_one() -> None:
    session = read_session(json_hash(as_json(CONTEXT_JSON)), "json")
    real = read_session(jdk_hash(sample("7.2.x", "core.context.TransientSecurityContext")), "jdk")
    assert (session.creation_ms, session.last_accessed_ms, session.max_inactive_seconds) == (T0, T1, 1800)
    assert identity(session.context) == identity(real.context) == USER
    assert expires_at_ms(read_session(json_hash(b"", max_inactive=-1), "json")) is None


def test_json_oauth2_login_gives_the_same_identity_as_the_real_stream() -> None:
    real = java.loads(sample("7.2.x", "oauth2.client.authentication.OAuth2AuthenticationToken"))
    # Jackson's form has no "authenticated": its creator always builds an authenticated token.
    assert "authenticated" not in OAUTH2_JSON["authentication"]
    assert identity(loads_json(as_json(OAUTH2_JSON))) == identity(in_context(real)) == OAUTH2


def test_json_oidc_login_collects_attributes_from_the_claims_and_gives_the_email() -> None:
    tree = loads_json(as_json(oidc_json(email="person@example.com")))
    assert identity(tree) == SpringIdentity("subject", "person@example.com", ("OIDC_USER", "SCOPE_read"))
    assert isinstance(tree, dict)
    attributes = tree["authentication"]["principal"]["attributes"]
    # As DefaultOidcUser collects them: the userinfo claims, then the ID token's, which win ("sub").
    assert attributes["sub"] == "subject" and attributes["name"] == "full name"
    assert attributes["iat"] == 1786399529.989254 and attributes["aud"] == ["client-id"]
    assert identity(loads_json(as_json(oidc_json(email=None)))).email is None  # type: ignore[union-attr]
    assert identity(loads_json(as_json(oidc_json(email=None, name_key="name")))).name == "full name"  # type: ignore[union-attr]


def test_json_anonymous_and_unauthenticated_tokens_are_no_identity() -> None:
    auth = dict(CONTEXT_JSON["authentication"])
    anonymous = {**auth, "@class": SEC + "authentication.AnonymousAuthenticationToken", "keyHash": 1}
    assert identity(loads_json(as_json({"@class": CONTEXT, "authentication": anonymous}))) is None
    unauthenticated = {**auth, "authenticated": False}
    assert identity(loads_json(as_json({"@class": CONTEXT, "authentication": unauthenticated}))) is None
    assert identity(loads_json(as_json({"@class": CONTEXT, "authentication": None}))) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"@class": "org.apache.commons.collections.functors.InvokerTransformer"}', "InvokerTransformer"),
        (b'["java.util.PriorityQueue", []]', "PriorityQueue"),
        (b'{"authentication": null}', "of no class is not accepted"),
        (b'["a", "b", "c"]', "no accepted type wrapper"),
        (b"[]", "no accepted type wrapper"),
        (b'["java.time.Instant", "2020"]', "no accepted type wrapper"),
        (b'["java.lang.Integer", 1.5]', "java.lang.Integer of 1.5"),
        (b'["java.lang.Long", true]', "no accepted type wrapper"),
        # A class name that is no string: refused, never a TypeError from a membership test.
        (b'{"@class": []}', "of a class name of type list is not accepted"),
        (b'{"@class": {}}', "of a class name of type dict is not accepted"),
        (b'{"@class": {"@class": "java.util.HashMap"}}', "of type dict is not accepted"),
        (b'{"@class": 1}', "of type int is not accepted"),
        (b'{"@class": "java.util.HashMap", "a": {"@class": ["java.util.HashMap"]}}', "of type list"),
        (b"[[], []]", "type id a list"),
        (b'[{"@class": "java.util.HashMap"}, []]', "type id a dict"),
        # A map holding the key "@class": Jackson writes it after the type id, so the key comes twice.
        (b'{"@class": "java.util.HashMap", "@class": "' + CONTEXT.encode() + b'"}', "twice"),
        # What the bounded JSON parser (formats.json) refuses, refused here too.
        (b'{"@class": "java.util.HashMap", "a": NaN}', "NaN"),
        (b'{"@class": "java.util.HashMap", "a": 1e999}', "overflows"),
        (b'{"@class": "java.util.HashMap", "a": 1, "a": 2}', "twice"),
        (b'{"@class": "java.util.HashMap", "a": "\\ud800"}', "surrogate"),
        (b'"\xff"', "not UTF-8"),
        (b"1" * 5000, "over 64 bits"),
        (b"{", "not JSON"),
        (b"[" * 30_000 + b"]" * 30_000, "deeper"),
        (b'["java.util.ArrayList", [' * 40 + b"]]" * 40, "deeper"),
        (b'"' + b"x" * 70_000 + b'"', "over"),
    ],
)
def test_json_outside_the_accepted_subset_is_refused(text: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        loads_json(text)


def test_json_with_more_elements_than_the_bound_is_refused() -> None:
    with pytest.raises(Refused, match="more than 10000"):
        loads_json(b'["java.util.ArrayList", [' + b",".join([b"1"] * 12_000) + b"]]")


def test_a_json_hash_with_a_non_integer_time_is_refused() -> None:
    fields = json_hash(as_json(CONTEXT_JSON))
    fields[b"creationTime"] = b"1.7e12"
    with pytest.raises(Refused, match="creationTime is float"):
        read_session(fields, "json")
    fields[b"creationTime"] = b'["java.lang.Long", 1700000000000]'  # a mapper typing everything writes this
    assert read_session(fields, "json").creation_ms == T0
