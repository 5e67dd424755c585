"""The reasons table: every reason has one row, and the rows are what the wire, the log and the metrics show."""

from __future__ import annotations

import json

import pytest

from sidecar.core import reasons
from sidecar.core.decision import Deny, Found, decide, denial, inspect
from sidecar.core.reasons import RULES, Reason, metric_label
from sidecar.core.request import RequestView
from sidecar.core.session import new_session
from tests.support.edge import SETTINGS

# Pinned: CONTRACT.md, the README, Envoy access logs and dashboards read these exact values.
WIRE = {
    Reason.SESSION: (200, "", "session", None),
    Reason.PUBLIC: (200, "", "public", None),
    Reason.STALE: (200, "", "stale", None),
    Reason.NO_SESSION: (401, "unauthenticated", "session_required", None),
    Reason.FORGED: (401, "unauthenticated", "session_invalid", "forged"),
    Reason.UNKNOWN: (401, "unauthenticated", "session_invalid", "unknown"),
    Reason.RECORD_CORRUPT: (401, "unauthenticated", "session_invalid", "unknown"),
    Reason.RECORD_TOO_LARGE: (401, "unauthenticated", "session_record_too_large", "unknown"),
    Reason.STORE_UNAVAILABLE: (503, "unavailable", "session_store_unavailable", None),
    Reason.MISSING_ROLES: (403, "forbidden", "missing_roles", None),
    Reason.IDENTITY_TOO_LARGE: (403, "forbidden", "identity_too_large", None),
    Reason.FORWARDED_CONFLICT: (403, "forbidden", "forwarded_conflict", None),
}


def test_every_reason_has_exactly_its_pinned_row() -> None:
    assert set(RULES) == set(Reason) == set(WIRE)
    assert {r: (rule.status, rule.error, rule.text, rule.invalid) for r, rule in RULES.items()} == WIRE


def test_a_reason_without_a_row_stops_the_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reasons, "RULES", {r: rule for r, rule in RULES.items() if r is not Reason.STALE})
    with pytest.raises(RuntimeError, match="reasons without a rule: STALE"):
        reasons._check_table()


@pytest.mark.parametrize("reason", [r for r in Reason if RULES[r].status not in (200, 401)], ids=lambda r: r.name)
def test_a_json_denial_is_its_rows_status_body_and_headers(reason: Reason) -> None:
    rule = RULES[reason]
    deny = denial(reason)
    assert (deny.status, deny.reason) == (rule.status, rule.text)
    assert json.loads(deny.body) == {"error": rule.error, "reason": rule.text}
    assert deny.headers == (("content-type", "application/json"), ("cache-control", "no-store"), *rule.headers)


def test_only_the_unavailable_denial_asks_to_retry() -> None:
    assert [r for r in Reason if RULES[r].headers] == [Reason.STORE_UNAVAILABLE]
    assert RULES[Reason.STORE_UNAVAILABLE].headers == (("retry-after", "1"),)


@pytest.mark.parametrize("reason", [r for r in Reason if RULES[r].status == 401], ids=lambda r: r.name)
def test_every_401_reason_a_lookup_finds_is_answered_with_its_row(reason: Reason) -> None:
    request = RequestView("GET", "https", "app.example", "/app", (("accept", "application/json"),))
    deny = decide(SETTINGS, request, inspect(SETTINGS, request), Found(reason))
    assert isinstance(deny, Deny) and (deny.status, deny.reason) == (401, RULES[reason].text)
    assert json.loads(deny.body) == {"error": "unauthenticated", "reason": RULES[reason].text}


@pytest.mark.parametrize("reason", [Reason.SESSION, Reason.STALE], ids=lambda r: r.name)
def test_an_allow_carries_its_rows_text(reason: Reason) -> None:
    record = new_session(session_id="s", user_id="u", email=None, roles=(), attributes={}, idle_timeout=60,
                         absolute_timeout=600, now=0.0)  # fmt: skip
    request = RequestView("GET", "https", "app.example", "/app", ())
    assert decide(SETTINGS, request, inspect(SETTINGS, request), Found(reason, record)).reason == RULES[reason].text


def test_metric_labels_cannot_grow_with_role_names_or_unknown_reasons() -> None:
    assert metric_label("missing_roles:admin,ops") == "missing_roles"
    assert metric_label("session_required") == "session_required"
    assert metric_label("weird:thing") == "other"
    assert metric_label("weird") == "other"
    assert {metric_label(rule.text) for rule in RULES.values()} == {rule.metric for rule in RULES.values()}
