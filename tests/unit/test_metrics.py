"""Metrics: bounded labels, cache counters carried over by growth, and the exposition (one process or many)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.metrics import (
    CHECK_BUCKETS,
    INVALID_TOKEN_KINDS,
    Metrics,
    check_bucket,
    exposition,
    prepare_multiprocess_dir,
)
from sidecar.store.cache import CacheStats


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_decisions_are_counted_by_outcome_status_and_reason_with_latency() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.decided("allow", 200, "session", 0.0004)
    metrics.decided("deny", 401, "session_required", 0.00002)
    metrics.decided("deny", 401, "session_required", 0.00002)
    assert value(registry, "sidecar_decisions_total", outcome="allow", status="200", reason="session") == 1
    assert value(registry, "sidecar_decisions_total", outcome="deny", status="401", reason="session_required") == 2
    assert value(registry, "sidecar_check_duration_seconds_count") == 3
    assert value(registry, "sidecar_check_duration_seconds_bucket", le="0.0005") == 3
    assert value(registry, "sidecar_check_duration_seconds_bucket", le="0.0001") == 2


def test_decision_labels_come_from_the_reasons_table() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.decided("deny", 403, "missing_roles:admin,ops", 0.001)
    metrics.decided("deny", 401, "made_up", 0.001)
    assert value(registry, "sidecar_decisions_total", outcome="deny", status="403", reason="missing_roles") == 1
    assert value(registry, "sidecar_decisions_total", outcome="deny", status="401", reason="other") == 1


def exposed(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines but the *_created timestamps (serving processes disable them: process_registry)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


# On, between and beyond the bucket bounds (0.15 is one; 3.0 is only under +Inf), in no particular order.
DURATIONS = (0.00005, 0.0001, 0.00010001, 0.0003, 0.15, 0.1500001, 0.0, 3.0, 0.00025, 0.042, 0.00005, 1.0)


def test_tallied_decisions_expose_exactly_as_if_each_had_been_counted_when_made() -> None:
    one_by_one, tallied = CollectorRegistry(), CollectorRegistry()
    direct, batched = Metrics(one_by_one), Metrics(tallied)
    outcomes = [("allow", 200, "session"), ("deny", 403, "missing_roles:admin"), ("deny", 401, "session_invalid")]
    decisions: dict[tuple[str, int, str], float] = {}
    buckets: dict[int, float] = {}
    total = 0.0
    for i, seconds in enumerate(DURATIONS):
        outcome, status, reason = outcomes[i % len(outcomes)]
        direct.decided(outcome, status, reason, seconds)
        decisions[outcomes[i % len(outcomes)]] = decisions.get(outcomes[i % len(outcomes)], 0) + 1
        buckets[check_bucket(seconds)] = buckets.get(check_bucket(seconds), 0) + 1
        total += seconds
    batched.add_decisions(decisions)
    batched.add_check_seconds(buckets, total)
    assert exposed(tallied) == exposed(one_by_one)
    assert value(tallied, "sidecar_check_duration_seconds_count") == len(DURATIONS)


def test_a_duration_lands_in_the_bucket_observe_puts_it_in() -> None:
    for seconds in (*DURATIONS, *CHECK_BUCKETS):
        registry = CollectorRegistry()
        Metrics(registry).check_seconds.observe(seconds)
        counted = Metrics(CollectorRegistry())
        counted.add_check_seconds({check_bucket(seconds): 1}, seconds)
        assert exposed(counted.registry) == exposed(registry), seconds


def test_the_invalid_token_counter_has_the_kinds_the_reasons_table_names() -> None:
    assert INVALID_TOKEN_KINDS == ("forged", "unknown")


def test_cache_counters_are_carried_over_by_their_growth_only() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.sync_cache(CacheStats(hits=5, misses=2, invalidations=1, entries=3, bytes=900, flushes=0))
    metrics.sync_cache(CacheStats(hits=7, misses=2, invalidations=4, entries=1, bytes=300, flushes=1))
    assert value(registry, "sidecar_cache_lookups_total", result="hit") == 7
    assert value(registry, "sidecar_cache_lookups_total", result="miss") == 2
    assert value(registry, "sidecar_cache_invalidations_total", kind="message") == 4
    assert value(registry, "sidecar_cache_invalidations_total", kind="flush") == 1
    assert value(registry, "sidecar_cache_entries") == 1


def test_invalid_token_kinds_are_exported_from_the_start() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    assert registry.get_sample_value("sidecar_invalid_tokens_total", {"kind": "forged"}) == 0
    assert registry.get_sample_value("sidecar_invalid_tokens_total", {"kind": "unknown"}) == 0


def test_exposition_of_one_process_is_prometheus_text() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.workers.set(1)
    text = exposition(registry).decode()
    assert "# TYPE sidecar_decisions_total counter" in text
    assert "sidecar_workers_active 1.0" in text


_WORKER = textwrap.dedent(
    """
    import sys
    from sidecar.metrics import Metrics, process_registry
    metrics = Metrics(process_registry())
    metrics.workers.set(1)
    for _ in range(int(sys.argv[1])):
        metrics.decided("deny", 401, "session_required", 0.001)
    """
)


def test_workers_metrics_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"}
    directory.mkdir()
    for count in ("3", "4"):
        subprocess.run([sys.executable, "-c", _WORKER, count], env=env, check=True, timeout=60)
    render = (
        "import sys; from sidecar.metrics import exposition, process_registry; "
        "sys.stdout.write(exposition(process_registry()).decode())"
    )
    text = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, timeout=60, capture_output=True, text=True
    ).stdout
    assert 'sidecar_decisions_total{outcome="deny",reason="session_required",status="401"} 7.0' in text


def test_an_operator_multiprocess_dir_is_emptied_of_a_previous_runs_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_123.db").write_bytes(b"old")
    (given / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    directory, owned = prepare_multiprocess_dir()
    assert directory == str(given) and not owned
    assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]


def test_without_an_operator_dir_a_fresh_one_is_made_and_owned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    directory, owned = prepare_multiprocess_dir()
    try:
        assert owned and Path(directory).is_dir() and not any(Path(directory).iterdir())
    finally:
        shutil.rmtree(directory)
