"""The cost of the signed identity assertion per Check: ``AssertionIssuer.issue`` for ES256 and EdDSA keys.

Three cases per algorithm, side by side (µs per call, the median of several runs):

- **memo hit**: the same session again within half the ttl (the common case: a user's requests keep coming);
- **memo miss**: a session not in the LRU (signs, inserts, evicts the oldest of a full 10,000-entry memo);
- **no memo**: ``cache_size=0``, every call signs (what a Check would cost without memoization).

The whole Check path has a budget of ~50 µs; writes ``bench/results/assertion.md``.

    python bench/assertion.py [--runs 7] [--signs 2000] [--hits 50000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import cryptography
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from sidecar.authz.assertion_issuer import DEFAULT_CACHE_SIZE, AssertionIssuer
from sidecar.core.assertion import CLAIM_NAMES, AssertionSettings
from sidecar.core.session import SessionRecord

RESULTS = Path(__file__).resolve().parent / "results" / "assertion.md"
SETTINGS = AssertionSettings(
    header="x-user-assertion", issuer="session-sidecar", ttl=60.0, claims=CLAIM_NAMES, audience=""
)
RECORD = SessionRecord(
    session_id="3q2-7wEAAACAgICA",
    user_id="alice",
    email="alice@example.com",
    roles=("admin", "dev"),
)
HOST = "app.example.com:443"
NOW = 1_800_000_000.0


def private_pem(algorithm: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1()) if algorithm == "ES256" else ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def per_call_us(issuer: AssertionIssuer, records: list[SessionRecord]) -> float:
    issue = issuer.issue
    context: dict[str, str] = {}
    start = time.perf_counter_ns()
    for record in records:
        issue(record, HOST, context, NOW)
    return (time.perf_counter_ns() - start) / len(records) / 1000


def measure(algorithm: str, runs: int, signs: int, hits: int) -> dict[str, float]:
    pem = private_pem(algorithm)
    keys = [("k1", algorithm, pem)]
    samples: dict[str, list[float]] = {"hit": [], "miss": [], "none": []}
    for _ in range(runs):
        memo = AssertionIssuer(SETTINGS, keys)
        # Fill the memo first, so every miss below also evicts (the steady state of a busy sidecar).
        for i in range(DEFAULT_CACHE_SIZE):
            memo.issue(replace(RECORD, session_id=f"warm{i}"), HOST, {}, NOW)
        memo.issue(RECORD, HOST, {}, NOW)
        samples["hit"].append(per_call_us(memo, [RECORD] * hits))
        samples["miss"].append(per_call_us(memo, [replace(RECORD, session_id=f"new{i}") for i in range(signs)]))
        samples["none"].append(per_call_us(AssertionIssuer(SETTINGS, keys, cache_size=0), [RECORD] * signs))
    token = AssertionIssuer(SETTINGS, keys).issue(RECORD, HOST, {}, NOW)
    assert token is not None
    result = {case: statistics.median(values) for case, values in samples.items()}
    result["spread_none"] = max(samples["none"]) - min(samples["none"])
    result["bytes"] = float(len(token))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--signs", type=int, default=2000, help="calls per run that sign")
    parser.add_argument("--hits", type=int, default=50_000, help="calls per run that hit the memo")
    args = parser.parse_args()

    results = {algorithm: measure(algorithm, args.runs, args.signs, args.hits) for algorithm in ("ES256", "EdDSA")}
    lines = [
        "# Signed identity assertion: cost per Check",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), PyJWT {jwt.__version__}, "
        f"cryptography {cryptography.__version__}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        f"- `AssertionIssuer.issue` (claims sub, email, roles, sid; audience from the host; ttl 60s), µs per call, "
        f"median of {args.runs} runs ({args.hits} memo hits, {args.signs} misses and {args.signs} unmemoized "
        "calls per run); the memo is full (10,000 entries) so each miss also evicts",
        "",
        "| algorithm | memo hit µs | memo miss µs | no memo µs | no memo spread µs | token bytes |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for algorithm, r in results.items():
        lines.append(
            f"| {algorithm} | {r['hit']:.2f} | {r['miss']:.1f} | {r['none']:.1f} | {r['spread_none']:.1f} "
            f"| {r['bytes']:.0f} |"
        )
    lines += [
        "",
        "A Check's whole budget is ~50 µs: signing on every allow would take most of it, a memo hit takes ~1 µs. "
        "A session's token is reused until half its ttl is left, so a user active every few seconds costs one "
        "signature per ttl/2 (30 s by default).",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
