"""MeteredStore: every store operation timed, every failure counted by kind, answers passed through unchanged."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.session import SessionRecord
from sidecar.core.tokens import SessionKey
from sidecar.errors import CorruptRecord, StoreUnavailable
from sidecar.metrics import Metrics
from sidecar.store.memory import MemoryStore
from sidecar.store.metered import MeteredStore, error_label

KEY = SessionKey(tag="abc123", digest="d" * 64)


class Failing(MemoryStore):
    def __init__(self, error: BaseException | None = None, delay: float = 0.0) -> None:
        super().__init__()
        self.error = error
        self.delay = delay

    async def resolve(self, key: SessionKey, now: float) -> SessionRecord | None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return await super().resolve(key, now)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_a_successful_read_is_timed_and_its_answer_passed_through() -> None:
    registry = CollectorRegistry()
    store = MeteredStore(Failing(), Metrics(registry))
    assert await store.resolve(KEY, 0.0) is None
    assert sample(registry, "sidecar_store_duration_seconds_count", operation="resolve") == 1
    assert sample(registry, "sidecar_store_errors_total", operation="resolve", error="unavailable") == 0


@pytest.mark.parametrize(
    ("error", "label"),
    [(StoreUnavailable("down"), "unavailable"), (CorruptRecord("bad"), "corrupt"), (RuntimeError("?"), "other")],
)
async def test_failures_are_counted_by_kind_and_still_raised(error: Exception, label: str) -> None:
    registry = CollectorRegistry()
    store = MeteredStore(Failing(error), Metrics(registry))
    with pytest.raises(type(error)):
        await store.resolve(KEY, 0.0)
    assert sample(registry, "sidecar_store_errors_total", operation="resolve", error=label) == 1
    assert sample(registry, "sidecar_store_duration_seconds_count", operation="resolve") == 1


async def test_a_read_cut_by_the_request_deadline_counts_as_a_timeout() -> None:
    registry = CollectorRegistry()
    store = MeteredStore(Failing(delay=1.0), Metrics(registry))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await store.resolve(KEY, 0.0)
    assert sample(registry, "sidecar_store_errors_total", operation="resolve", error="timeout") == 1


async def test_every_operation_of_the_store_interface_is_delegated() -> None:
    registry = CollectorRegistry()
    store = MeteredStore(MemoryStore(), Metrics(registry))
    await store.ping()
    assert await store.list_user("nobody") == []
    assert await store.revoke_user("nobody") == 0
    assert await store.revoke(KEY) is False
    assert await store.get(KEY) is None
    for operation in ("ping", "list_user", "revoke_user", "revoke", "get"):
        assert sample(registry, "sidecar_store_duration_seconds_count", operation=operation) == 1
    await store.close()


def test_error_labels() -> None:
    assert error_label(asyncio.CancelledError()) == "timeout"
    assert error_label(TimeoutError()) == "timeout"
