"""The transport-neutral parts of an answer: metadata, and what each transport encodes once."""

from __future__ import annotations

import pytest

from sidecar.authz import answers, grpc_v3, http_answers
from sidecar.core.decision import Allow, Deny, denial, unavailable
from sidecar.core.reasons import Reason

ALICE = Allow(headers_to_set=(("x-user-id", "alice"),), headers_to_remove=(), user_id="alice", session_id="h1")
PUBLIC = Allow(headers_to_set=(), headers_to_remove=("x-user-id",), reason="public")
REDIRECT = Deny(status=302, reason="session_missing", body=b"", headers=(("location", "https://login/?rd=x"),))


def test_an_allow_reports_its_reason_and_for_a_session_the_user_and_session_handle() -> None:
    assert answers.allow_metadata(ALICE) == {
        "decision": "allow",
        "reason": "session",
        "user_id": "alice",
        "session_id": "h1",
    }
    assert answers.allow_metadata(PUBLIC) == {"decision": "allow", "reason": "public"}


def test_a_denial_reports_its_reason_and_status() -> None:
    assert answers.deny_metadata(unavailable()) == {
        "decision": "deny",
        "reason": "session_store_unavailable",
        "status": 503,
    }


def test_an_unanswerable_request_gets_the_503_of_a_store_failure_never_an_allow() -> None:
    assert answers.unanswerable() == unavailable()
    assert answers.unanswerable().status == 503


@pytest.mark.parametrize("decision", [ALICE, PUBLIC])
def test_both_transports_carry_every_allow_metadata_key(decision: Allow) -> None:
    expected = answers.allow_metadata(decision)
    assert dict(grpc_v3.to_check_response(decision).dynamic_metadata) == expected
    head = http_answers.encode(decision).decode().split("\r\n")
    carried = {line.partition(": ")[0]: line.partition(": ")[2] for line in head if line.startswith("x-authz-")}
    assert carried == {
        f"x-authz-{key.replace('_', '-')}": value
        for key, value in expected.items()
        if key not in answers.IN_STATUS_LINE
    }


def test_both_transports_carry_every_denial_metadata_key() -> None:
    deny = denial(Reason.UNKNOWN)
    expected = answers.deny_metadata(deny)
    assert dict(grpc_v3.to_check_response(deny).dynamic_metadata) == expected
    status_line, *lines = http_answers.encode(deny).partition(b"\r\n\r\n")[0].decode().split("\r\n")
    assert status_line.split(" ")[1] == str(expected["status"])  # decision and status: in the status line
    assert [line for line in lines if line.startswith("x-authz-")] == [f"x-authz-reason: {expected['reason']}"]


def test_denials_are_encoded_once_each_and_redirects_every_time() -> None:
    encoded: list[Deny] = []

    def encode(deny: Deny) -> object:
        encoded.append(deny)
        return object()

    denials = answers.Denials(encode)
    forbidden = denial(Reason.MISSING_ROLES, "admin")
    assert denials.of(forbidden) is denials.of(forbidden)
    assert denials.of(REDIRECT) is not denials.of(REDIRECT)
    assert encoded == [forbidden, REDIRECT, REDIRECT]
    assert forbidden in denials and REDIRECT not in denials


def test_denials_remember_at_most_max_entries_and_still_answer_the_rest() -> None:
    denials = answers.Denials(lambda deny: deny.reason, max_entries=2)
    for i in range(5):
        assert denials.of(denial(Reason.MISSING_ROLES, f"role{i}")) == f"missing_roles:role{i}"
    assert len(denials) == 2


def test_allow_metadata_is_rendered_once_per_session_and_reason() -> None:
    rendered: list[dict[str, str]] = []

    def render(metadata: dict[str, str]) -> str:
        rendered.append(metadata)
        return ",".join(metadata.values())

    memo = answers.AllowMetadata(render)
    other_request = Allow(
        headers_to_set=(("cookie", "a=1"),), headers_to_remove=("x-evil",), user_id="alice", session_id="h1"
    )
    stale = Allow(headers_to_set=(), headers_to_remove=(), user_id="alice", session_id="h1", reason="stale")
    assert memo.of(ALICE) == memo.of(other_request) == "allow,session,alice,h1"
    assert memo.of(stale) == "allow,stale,alice,h1"
    assert rendered == [answers.allow_metadata(ALICE), answers.allow_metadata(stale)]


def test_allow_metadata_that_cannot_be_rendered_is_refused_every_time_not_stored() -> None:
    calls = 0

    def render(metadata: dict[str, str]) -> str:
        nonlocal calls
        calls += 1
        if "\n" in metadata.get("user_id", ""):
            raise ValueError("unsafe")
        return "ok"

    memo = answers.AllowMetadata(render)
    unsafe = Allow(headers_to_set=(), headers_to_remove=(), user_id="a\nb", session_id="h")
    for _ in range(2):
        with pytest.raises(ValueError, match="unsafe"):
            memo.of(unsafe)
    assert calls == 2 and len(memo) == 0


def test_allow_metadata_remembers_at_most_max_entries_sessions() -> None:
    memo = answers.AllowMetadata(lambda metadata: metadata["session_id"], max_entries=3)
    for i in range(10):
        allow = Allow(headers_to_set=(), headers_to_remove=(), user_id="u", session_id=f"h{i}")
        assert memo.of(allow) == f"h{i}"
    assert len(memo) == 3
