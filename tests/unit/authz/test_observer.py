"""The decision observer: counts every decision, logs every denial and a sample of allows, flags repeat sources."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.authz import observer as observer_module
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
    watcher.sync()
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
    watcher.sync()
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


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """Threads switch every few bytecodes: an increment that is not the one writer's own would get lost."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("frequent_switches")
def test_decisions_from_many_threads_are_all_counted_once_synced() -> None:
    registry = CollectorRegistry()
    watcher = observer(registry)
    threads, each = 8, 2000
    start = threading.Barrier(threads + 1)

    def decide() -> None:
        start.wait()
        for i in range(each):
            watcher.decided(request(), ALLOW, 0.00005, route="/", record=RECORD, invalid=None)
            watcher.decided(request(""), DENY, 0.003, route="/", record=None, invalid="unknown")
            if i % 2:
                watcher.source_read("native", "absent")

    workers = [threading.Thread(target=decide) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    for _ in range(20):  # publishing while the threads count must neither lose nor repeat anything
        watcher.sync()
    for worker in workers:
        worker.join()
    watcher.sync()
    total = threads * each
    assert value(registry, "sidecar_decisions_total", outcome="allow", status="200", reason="session") == total
    assert value(registry, "sidecar_decisions_total", outcome="deny", status="401", reason="session_invalid") == total
    assert value(registry, "sidecar_invalid_tokens_total", kind="unknown") == total
    assert value(registry, "sidecar_source_reads_total", source="native", result="absent") == total // 2
    assert value(registry, "sidecar_check_duration_seconds_count") == 2 * total
    assert value(registry, "sidecar_check_duration_seconds_bucket", le="0.0001") == total
    assert value(registry, "sidecar_check_duration_seconds_bucket", le="0.0025") == total
    assert value(registry, "sidecar_check_duration_seconds_bucket", le="0.005") == 2 * total
    assert value(registry, "sidecar_check_duration_seconds_sum") == pytest.approx(total * 0.00305)
    watcher.sync()  # the ended threads' counts were published once and are not published again
    assert value(registry, "sidecar_check_duration_seconds_count") == 2 * total


def test_counts_reach_prometheus_at_sync_not_before() -> None:
    registry = CollectorRegistry()
    watcher = observer(registry)
    watcher.decided(request(), ALLOW, 0.0002, route="/", record=RECORD, invalid=None)
    labels = {"outcome": "allow", "status": "200", "reason": "session"}
    assert value(registry, "sidecar_decisions_total", **labels) == 0
    watcher.sync()
    assert value(registry, "sidecar_decisions_total", **labels) == 1
    watcher.sync()
    assert value(registry, "sidecar_decisions_total", **labels) == 1
    assert value(registry, "sidecar_check_duration_seconds_bucket", le="0.00025") == 1
    assert value(registry, "sidecar_check_duration_seconds_bucket", le="0.0001") == 0


def test_an_allow_not_logged_builds_no_observation_and_a_denial_does(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    built: list[Observation] = []

    def counted(*args: object) -> Observation:
        built.append(Observation(*args))  # type: ignore[arg-type]
        return built[-1]

    monkeypatch.setattr(observer_module, "Observation", counted)
    watcher = observer(CollectorRegistry(), sample=0.4)  # the draw (0.5) is above: allows are not logged
    watcher.decided(request(), ALLOW, 0.001, route="/", record=RECORD, invalid=None)
    assert built == [] and decision_lines(caplog) == []
    watcher.decided(request(), DENY, 0.001, route="/", record=None, invalid="forged")
    (seen,) = built
    assert seen.decision is DENY and seen.invalid == "forged"
    (line,) = decision_lines(caplog)
    assert line.fields == decision_fields(request(), seen)  # type: ignore[attr-defined]


def test_a_sampled_allow_logs_the_same_fields_as_its_observation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    watcher = observer(CollectorRegistry(), sample=0.6)
    watcher.decided(request(), ALLOW, 0.0015, route="/app", record=RECORD, invalid=None, session_source="native")
    (line,) = decision_lines(caplog)
    expected = decision_fields(request(), Observation(ALLOW, "/app", RECORD, None, 0.0015, "native"))
    assert line.fields == expected  # type: ignore[attr-defined]


_MULTIPROCESS = textwrap.dedent(
    """
    import sys
    from sidecar.authz.observer import DecisionObserver
    from sidecar.core.decision import _json_deny
    from sidecar.core.request import RequestView
    from sidecar.metrics import Metrics, exposition, process_registry
    registry = process_registry()
    watcher = DecisionObserver(Metrics(registry), sample_allows=0.0)
    deny = _json_deny(401, "unauthenticated", "session_required")
    view = RequestView(method="GET", scheme="https", host="h", path="/", headers=())
    for _ in range(3):
        watcher.decided(view, deny, 0.001, route="/", record=None, invalid="forged")
    watcher.source_read("native", "session")
    sys.stdout.write(exposition(registry).decode())  # no sync: the other workers could not have run theirs
    """
)


def test_in_multiprocess_mode_each_decision_is_in_the_shared_files_at_once(tmp_path: Path) -> None:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    text = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert 'sidecar_decisions_total{outcome="deny",reason="session_required",status="401"} 3.0' in text
    assert 'sidecar_invalid_tokens_total{kind="forged"} 3.0' in text
    assert 'sidecar_source_reads_total{result="session",source="native"} 1.0' in text
    assert "sidecar_check_duration_seconds_count 3.0" in text


def test_synced_tallies_expose_what_counting_each_decision_as_it_was_made_exposes() -> None:
    tallied, one_by_one = CollectorRegistry(), CollectorRegistry()
    watcher, direct = observer(tallied), Metrics(one_by_one)
    # On, between and beyond the bucket bounds, allows and denials interleaved.
    for i, seconds in enumerate((0.00005, 0.0001, 0.00010001, 0.15, 0.1500001, 0.0, 3.0, 0.00025, 0.042)):
        decision = ALLOW if i % 2 else DENY
        watcher.decided(request(""), decision, seconds, route="/", record=None, invalid=None)
        direct.decided("allow" if i % 2 else "deny", decision.status, decision.reason, seconds)
    watcher.sync()

    def exposed(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if "_created" not in line]  # timestamps differ

    assert exposed(tallied) == exposed(one_by_one)
