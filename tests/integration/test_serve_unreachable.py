"""``serve`` against a Redis Cluster none of whose nodes answers: it keeps serving, its health probe reports the
store unavailable in one line (a ``RedisClusterException`` is not a RedisError; it used to escape the store's error
mapping and end the process with exit 1 and a traceback), and SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from tests.integration.test_cli import closed_port, start_serve
from tests.support.processes import free_port, wait_for_port

pytestmark = pytest.mark.integration

PROBE_WAIT = 20.0  # the health probe runs about once a second; generous for a loaded 2-core box


def test_serve_starts_with_an_unreachable_redis_cluster_and_stops_cleanly() -> None:
    port = free_port()
    proc = start_serve(port, f"redis+cluster://127.0.0.1:{closed_port()}")
    lines: list[str] = []
    probed = threading.Event()

    def read() -> None:  # stderr is read as it comes, so the signal goes only once the probe has run
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "NOT_SERVING" in line:
                probed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for_port("127.0.0.1", port, 20.0, proc=proc)
        deadline = time.monotonic() + PROBE_WAIT
        while not probed.wait(0.1) and proc.poll() is None and time.monotonic() < deadline:
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(timeout=10)
    err = "".join(lines)
    assert probed.is_set(), f"no NOT_SERVING report within {PROBE_WAIT:g}s:\n{err}"
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    report = json.loads(next(line for line in lines if "NOT_SERVING" in line))
    assert report["level"] == "warning"
    assert "no usable cluster node" in report["msg"], report
