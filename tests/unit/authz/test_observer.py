"""The decision observer: counts every decision, logs every denial and a sample of allows, flags repeat sources."""

from __future__ import annotations

import logging
import secrets

import pytest
from prometheus_client import CollectorRegistry

from sidecar.authz.observer import DecisionObserver, Observation, decision_fields, logged_path
from sidecar.core.abuse import RepeatedInvalidTokens
from sidecar.core.decision import Allow, _json_deny
from sidecar.core.request import RequestView
from sidecar.core.session import SessionRecord
from sidecar.core.tokens import KeyRing, mint_token
from sidecar.metrics import Metrics

TOKEN = mint_token(KeyRing.of([("k1", b"k" * 32)]), secrets.token_bytes(32), "abc123")
RECORD = SessionRecord(session_id="sid-1", user_id="alice", email="a@example.com", roles=("dev",))
ALLOW = Allow(headers_to_set=(("x-user-id", "alice"),), headers_to_remove=(), user_id="alice", session_id="sid-1")
DENY = _json_deny(401, "unauthenticated", "session_invalid")


def request(source: str = "10.0.0.7") -> RequestView:
    return RequestView(
        method="GET",
        scheme="https",
        host="app.example.com",
        path=f"/orders?token={TOKEN}",
        headers=(("cookie", f"SESSION={TOKEN}; theme=dark"), ("x-user-id", "mallory")),
        source=source,
    )


def observer(registry: CollectorRegistry, *, sample: float = 0.0, threshold: int = 3) -> DecisionObserver:
    return DecisionObserver(
        Metrics(registry),
        sample_allows=sample,
        tracker=RepeatedInvalidTokens(threshold=threshold, window=60),
        clock=lambda: 1000.0,
        sample=lambda: 0.5,
    )


def decision_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sidecar.decision"]


def test_every_denial_is_logged_with_its_reason_and_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    observer(CollectorRegistry()).observe(request(), Observation(DENY, "/", None, "forged", 0.001))
    (line,) = decision_lines(caplog)
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["decision"] == "deny" and fields["status"] == 401 and fields["reason"] == "session_invalid"
    assert fields["invalid_token"] == "forged" and fields["path"] == "/orders" and fields["source"] == "10.0.0.7"
    rendered = repr(fields)
    assert TOKEN not in rendered and "theme" not in rendered and "mallory" not in rendered


def test_allows_are_logged_only_in_the_sampled_fraction(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    seen = Observation(ALLOW, "/", RECORD, None, 0.001)
    observer(CollectorRegistry(), sample=0.0).observe(request(), seen)
    observer(CollectorRegistry(), sample=0.4).observe(request(), seen)  # the draw (0.5) is above: not logged
    assert decision_lines(caplog) == []
    observer(CollectorRegistry(), sample=0.6).observe(request(), seen)
    (line,) = decision_lines(caplog)
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["decision"] == "allow" and fields["user_id"] == "alice" and fields["session_id"] == "sid-1"


def test_decisions_are_counted_whether_logged_or_not() -> None:
    registry = CollectorRegistry()
    watcher = observer(registry)
    watcher.observe(request(), Observation(ALLOW, "/", RECORD, None, 0.001))
    watcher.observe(request(), Observation(DENY, "/", None, "unknown", 0.001))
    labels = {"outcome": "allow", "status": "200", "reason": "session"}
    assert registry.get_sample_value("sidecar_decisions_total", labels) == 1
    labels = {"outcome": "deny", "status": "401", "reason": "session_invalid"}
    assert registry.get_sample_value("sidecar_decisions_total", labels) == 1
    assert registry.get_sample_value("sidecar_invalid_tokens_total", {"kind": "unknown"}) == 1


def test_a_source_repeating_invalid_tokens_is_flagged_once_and_visible_in_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sidecar.abuse")
    registry = CollectorRegistry()
    watcher = observer(registry, threshold=3)
    for _ in range(5):
        watcher.observe(request("10.9.9.9"), Observation(DENY, "/", None, "forged", 0.001))
    watcher.observe(request("10.1.1.1"), Observation(DENY, "/", None, "forged", 0.001))
    watcher.sync()
    assert registry.get_sample_value("sidecar_invalid_tokens_total", {"kind": "forged"}) == 6
    assert registry.get_sample_value("sidecar_invalid_token_sources_flagged_total") == 1
    assert registry.get_sample_value("sidecar_invalid_token_sources") == 1
    (warning,) = [r for r in caplog.records if r.name == "sidecar.abuse"]
    assert warning.fields["source"] == "10.9.9.9"  # type: ignore[attr-defined]


def test_requests_without_a_source_are_counted_but_not_tracked() -> None:
    registry = CollectorRegistry()
    watcher = observer(registry, threshold=1)
    watcher.observe(request(""), Observation(DENY, "/", None, "forged", 0.001))
    assert registry.get_sample_value("sidecar_invalid_tokens_total", {"kind": "forged"}) == 1
    assert registry.get_sample_value("sidecar_invalid_token_sources_flagged_total") == 0


def test_logged_path_drops_query_and_fragment_and_is_bounded() -> None:
    assert logged_path("/a/b?secret=1#frag") == "/a/b"
    assert len(logged_path("/" + "x" * 5000)) == 257


def test_decision_fields_of_a_forbidden_session_name_the_user() -> None:
    forbidden = _json_deny(403, "forbidden", "missing_roles:admin")
    fields = decision_fields(request(), Observation(forbidden, "/admin", RECORD, None, 0.002))
    assert fields["status"] == 403 and fields["user_id"] == "alice" and fields["route"] == "/admin"
    assert fields["duration_ms"] == 2.0
