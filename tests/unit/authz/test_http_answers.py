"""The bytes of an HTTP ext_authz / forward-auth answer: a Decision → an HTTP/1.1 response."""

from __future__ import annotations

import pytest

from sidecar.authz import forwarded, http_answers
from sidecar.core.decision import Allow, Deny, unavailable
from sidecar.core.request import RequestView


def view(target: str, *headers: tuple[str, str], method: str = "GET") -> RequestView:
    return forwarded.to_request_view(method, target, tuple(headers))


def test_forward_auth_allow_echoes_an_untouched_cookie_only() -> None:
    request = view("/forward-auth", ("cookie", "a=1"), ("cookie", "b=2"))
    untouched = Allow(headers_to_set=(("x-user-id", "alice"),), headers_to_remove=("x-user-evil",))
    echoed = http_answers.forward_auth_allow(untouched, request)
    assert echoed.headers_to_set == (("x-user-id", "alice"), ("cookie", "a=1; b=2"))
    assert echoed.headers_to_remove == ("x-user-evil",)
    rewritten = Allow(headers_to_set=(("cookie", "a=1"),), headers_to_remove=())
    removed = Allow(headers_to_set=(), headers_to_remove=("cookie",))
    for allow in (rewritten, removed):
        assert http_answers.forward_auth_allow(allow, request) is allow
    assert http_answers.forward_auth_allow(untouched, view("/forward-auth")) is untouched


def split(response: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    return status, [(n, v) for n, _, v in (line.partition(": ") for line in lines)], body


def test_allow_sets_headers_and_lists_the_rest_for_removal() -> None:
    allow = Allow(
        headers_to_set=(("x-user-id", "alice"), ("x-session-id", "h1"), ("cookie", "a=1; b=2")),
        headers_to_remove=("x-user-roles", "x-user-evil"),
    )
    status, headers, body = split(http_answers.encode(allow))
    assert status == "HTTP/1.1 200 OK"
    assert headers == [
        ("content-length", "0"),
        ("x-authz-reason", "session"),
        ("x-user-id", "alice"),
        ("x-session-id", "h1"),
        ("cookie", "a=1; b=2"),
        ("x-envoy-auth-headers-to-remove", "x-user-roles,x-user-evil"),
    ]
    assert body == b""


def test_an_allow_carries_its_reason_user_and_session_handle_as_metadata_headers() -> None:
    allow = Allow(headers_to_set=(("x-user-id", "alice"),), headers_to_remove=(), user_id="alice", session_id="h1")
    _, headers, _ = split(http_answers.encode(allow))
    assert [h for h in headers if h[0].startswith("x-authz-")] == [
        ("x-authz-reason", "session"),
        ("x-authz-user-id", "alice"),
        ("x-authz-session-id", "h1"),
    ]
    stale = Allow(headers_to_set=(), headers_to_remove=(), user_id="bob", session_id="h2", reason="stale")
    assert ("x-authz-reason", "stale") in split(http_answers.encode(stale))[1]


def test_a_denial_carries_its_reason_as_a_metadata_header() -> None:
    deny = Deny(status=401, reason="session_invalid", body=b"{}", headers=(("content-type", "application/json"),))
    assert ("x-authz-reason", "session_invalid") in split(http_answers.encode(deny))[1]


def test_an_allow_whose_metadata_would_split_the_response_becomes_a_503() -> None:
    allow = Allow(headers_to_set=(), headers_to_remove=(), user_id="a\r\nx-user-id: admin", session_id="h")
    status, headers, _ = split(http_answers.encode(allow))
    assert status.startswith("HTTP/1.1 503") and ("x-user-id", "admin") not in headers


def test_anonymous_allow_is_a_bare_200_and_close_adds_connection_close() -> None:
    anonymous = Allow(headers_to_set=(), headers_to_remove=(), reason="public")
    assert http_answers.encode(anonymous) == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-authz-reason: public\r\n\r\n"
    assert http_answers.encode(anonymous, close=True).endswith(b"connection: close\r\n\r\n")
    removing = Allow(headers_to_set=(), headers_to_remove=("cookie",))
    assert ("connection", "close") in split(http_answers.encode(removing, close=True))[1]


def test_non_utf8_cookie_bytes_survive_the_round_trip() -> None:
    value = b"a=\xff\xfe".decode("utf-8", "surrogateescape")
    response = http_answers.encode(Allow(headers_to_set=(("cookie", value),), headers_to_remove=()))
    assert b"\r\ncookie: a=\xff\xfe\r\n" in response


def test_denial_keeps_status_body_and_headers() -> None:
    deny = unavailable()
    status, headers, body = split(http_answers.encode(deny))
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert ("content-length", str(len(deny.body))) in headers
    assert ("retry-after", "1") in headers and ("content-type", "application/json") in headers
    assert body == deny.body
    assert http_answers.encode(deny) is http_answers.encode(deny), "constant denials are encoded once"


def test_redirect_is_not_cached_and_head_has_no_body() -> None:
    redirect = Deny(status=302, reason="r", body=b"", headers=(("location", "https://l/?rd=x"),))
    assert split(http_answers.encode(redirect))[0] == "HTTP/1.1 302 Found"
    assert redirect not in http_answers._DENIED
    deny = Deny(status=401, reason="r", body=b'{"error":"x"}', headers=(("www-authenticate", "Cookie"),))
    status, headers, body = split(http_answers.encode(deny, head_only=True))
    assert status == "HTTP/1.1 401 Unauthorized" and body == b""
    assert ("content-length", "0") in headers


def test_a_header_value_with_crlf_becomes_a_503_never_a_split_response() -> None:
    allow = Allow(headers_to_set=(("x-user-id", "a\r\nx-user-roles: admin"),), headers_to_remove=())
    status, headers, _ = split(http_answers.encode(allow))
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert not any(name == "x-user-roles" for name, _ in headers)


def test_equal_allows_are_answered_from_one_memoized_encoding() -> None:
    def allow() -> Allow:  # a fresh, equal object each time, as each request's decision is
        return Allow(headers_to_set=(("x-user-id", "memo"),), headers_to_remove=("cookie",), user_id="memo")

    first = http_answers.encode(allow())
    assert http_answers.encode(allow()) is first
    assert allow() in http_answers._allow_answers
    closing = http_answers.encode(allow(), close=True)
    assert closing == first[:-2] + b"connection: close\r\n\r\n"
    other = http_answers.encode(Allow(headers_to_set=(("x-user-id", "other"),), headers_to_remove=()))
    assert ("x-user-id", "other") in split(other)[1] and other != first


def test_an_unsafe_allow_is_refused_every_time_and_never_memoized() -> None:
    allow = Allow(headers_to_set=(("x-user-id", "a\r\nx-user-roles: admin"),), headers_to_remove=(), user_id="u")
    for _ in range(2):
        assert split(http_answers.encode(allow))[0] == "HTTP/1.1 503 Service Unavailable"
    assert allow not in http_answers._allow_answers


def test_the_allow_memo_is_bounded_in_count_and_answer_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_answers, "MAX_MEMOIZED_ALLOWS", 8)
    monkeypatch.setattr(http_answers, "_allow_answers", {})
    large = Allow(headers_to_set=(), headers_to_remove=tuple(f"x-user-{i:04}" for i in range(200)))
    answer = http_answers.encode(large)
    assert len(answer) > http_answers.MAX_MEMOIZED_ALLOW_BYTES and answer.endswith(b"x-user-0199\r\n\r\n")
    assert large not in http_answers._allow_answers, "an answer over the size bound is built each time"
    many = Allow(headers_to_set=(), headers_to_remove=tuple(f"x-user-{i}" for i in range(17)))
    assert len(http_answers.encode(many)) < http_answers.MAX_MEMOIZED_ALLOW_BYTES
    assert many not in http_answers._allow_answers, "an allow naming over 16 headers is built each time"
    allows = [Allow(headers_to_set=(("x-user-id", f"u{i}"),), headers_to_remove=()) for i in range(20)]
    for allow in allows:
        assert ("x-user-id", allow.headers_to_set[0][1]) in split(http_answers.encode(allow))[1]
    assert len(http_answers._allow_answers) == 8
    assert list(http_answers._allow_answers) == allows[-8:], "the oldest are dropped first"
