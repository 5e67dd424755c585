"""Fuzzing the whole decision path (issue #7): 0 crashes, 0 allows without a live session, no spoofed identity.

Hypothesis drives whole requests through a real AuthzService over the in-memory store (``harness.py`` holds the
service, the strategies and the oracle, shared with ``bench/fuzz.py``, the long runner behind ``make fuzz``).
The example counts are CI-sized (~3,700 cases); ``make fuzz`` runs the same properties for up to 200,000 cases
or 240 s.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, example, given, settings

from sidecar.core.decision import Allow, Deny
from tests.fuzz import harness
from tests.fuzz.harness import COOKIE, Case, Harness

# Large generated inputs are the point here, so Hypothesis's warnings about them are noise.
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

_HARNESS: list[Harness] = []


@pytest.fixture(scope="module", autouse=True)
def _harness_lifetime() -> Iterator[None]:
    yield
    while _HARNESS:
        _HARNESS.pop().close()


def subject() -> Harness:
    # Built once per module and reached from inside @given bodies, where function-scoped fixtures do not fit.
    if not _HARNESS:
        _HARNESS.append(Harness())
    return _HARNESS[0]


ALICE, BOB = (token for token, record in harness.LIVE.items() if record.user_id in ("alice", "bob"))


def test_the_oracle_agrees_with_hand_written_cases() -> None:
    # The oracle is the yardstick of every property below, so it is checked against cases worked out by hand.
    assert harness.session_values([f"a=1; {COOKIE}=x ; b", f"{COOKIE} \t= y\t;{COOKIE}="]) == ["x", "y", ""]
    assert harness.session_values([f"x{COOKIE}=1; \u3000{COOKIE}=2; a={COOKIE}=3; {COOKIE}S=4"]) == []
    assert harness.expected_session(Case("/app", (("cookie", f"{COOKIE}={harness.UNKNOWN}; {COOKIE}={BOB}"),)))
    three_dead = "; ".join(f"{COOKIE}={t}" for t in (harness.UNKNOWN, harness.REVOKED, harness.EXPIRED, ALICE))
    assert harness.expected_session(Case("/app", (("cookie", three_dead),))) is None
    assert harness.route_of("/hello") is harness.RouteKind.PROTECTED
    assert harness.route_of("/x%2Fpublic") is harness.RouteKind.UNKNOWN


def test_the_judge_catches_an_allow_without_a_session_and_a_leaked_spoof() -> None:
    # A property that cannot fail proves nothing: feed the judge wrong decisions and expect complaints.
    case = Case("/app", (("X-User-Id", "admin"), ("cookie", f"{COOKIE}={harness.UNKNOWN}")))
    assert harness.judge(case, Allow(headers_to_set=(), headers_to_remove=("x-user-id", "cookie")))
    leaked = Case("/public/page", (("X-User-Id", "admin"),))
    assert any("reaches the upstream" in p for p in harness.judge(leaked, Allow((), ())))
    alice = Case("/app", (("cookie", f"{COOKIE}={ALICE}"),))
    spoofed = Allow(headers_to_set=(("x-user-id", "admin"),), headers_to_remove=("cookie",), user_id="alice")
    assert harness.judge(alice, spoofed)
    assert harness.judge(alice, Deny(status=401, reason="r", body=b"", headers=()))


@settings(FUZZ, max_examples=1500)
@given(harness.arbitrary_requests)
@example(Case("/app", (("cookie", f"a=\udcff\udcfe; {COOKIE}={ALICE}"), ("X-USER-ID", "root"))))
@example(Case("/admin/panel", (("Cookie", f'{COOKIE}="{ALICE}"'), ("cookie", f"{COOKIE} = {BOB}\t"))))
@example(Case("/public/page", (("x-user-id", "admin"), ("x-user-id", "root"), ("X-Session-Id", "s"))))
def test_arbitrary_requests_never_crash_and_allow_only_the_live_session_cookie(case: Case) -> None:
    verdict = subject().check(case)
    event(verdict.label)
    assert verdict.problems == []


@settings(FUZZ, max_examples=1000)
@given(harness.live_session_requests())
@example(Case("/app", (("cookie", f"{COOKIE}={harness.UNKNOWN}; {COOKIE}={harness.REVOKED}; {COOKIE}={BOB}"),)))
@example(
    Case(
        "/app",
        (
            ("cookie", f"{COOKIE}={harness.UNKNOWN};{COOKIE}={harness.REVOKED};{COOKIE}={harness.EXPIRED}"),
            ("cookie", f"{COOKIE}={ALICE}"),
        ),
    )
)
def test_requests_around_a_live_session_allow_exactly_its_identity_and_strip_every_spoof(case: Case) -> None:
    verdict = subject().check(case)
    event(verdict.label)
    assert verdict.problems == []


@settings(FUZZ, max_examples=1000)
@given(harness.mutated_requests)
def test_mutated_valid_tokens_are_denied_unless_still_exactly_a_live_token(case: Case) -> None:
    verdict = subject().check(case)
    event(verdict.label)
    assert verdict.problems == []


@settings(FUZZ, max_examples=150)
@given(harness.large_requests)
@example(Case("/app", (("cookie", "; " * 30_000 + f"{COOKIE}={ALICE}"),)))
@example(Case("/app", (("cookie", "a=" + "\\" * 60_000 + f"; {COOKIE}={ALICE}"),)))
@example(Case("/app", (*(("cookie", f"c{i}=v") for i in range(200)), ("cookie", f"{COOKIE}={ALICE}"))))
def test_huge_headers_and_thousands_of_pairs_neither_crash_nor_lose_the_session(case: Case) -> None:
    verdict = subject().check(case)
    event(verdict.label)
    assert verdict.problems == []
