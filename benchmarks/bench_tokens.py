"""Delegation-token benchmark: p50 / p99 in microseconds.

Run: ``python benchmarks/bench_tokens.py``. Targets (issue 5): verify 1-hop <= 100 us,
3-token chain <= 300 us, cached repeat verify <= 5 us. ``raw pyjwt`` is the floor: an
Ed25519 decode with no delegation checks at all.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jwt

from policyengine.tokens import KeySet, MemoryRevocationStore, attenuate, mint, verify

NOW = time.time()


def measure(fn: Callable[[], object], n: int = 3000) -> tuple[float, float]:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(n * 0.99)] / 1000


def main() -> None:
    keys = KeySet.generate()
    store = MemoryRevocationStore(f"revoked-{i}" for i in range(10_000))
    root = mint(keys, issuer="https://auth.example", acting_for="besar", agent="travel-agent",
                permissions=["flights:*", "payments:refund"], max_amount=("500", "EUR"),
                ttl=3600, now=NOW)
    mid = attenuate(keys, root, agent="hotel-agent", permissions=["flights:*"], now=NOW)
    leaf = attenuate(keys, mid, agent="booking-agent", permissions=["flights:book"], now=NOW)
    pub = keys.active_key.public

    def cold(token: str) -> Callable[[], object]:
        def run() -> object:
            keys.clear_cache()
            return verify(keys, token, now=NOW, revocations=store)
        return run

    def new_leaf_known_parents() -> object:
        keys.verify_cache.clear()
        keys.hop_cache.pop(leaf, None)
        return verify(keys, leaf, now=NOW, revocations=store)

    rows = [
        ("raw pyjwt Ed25519 decode (floor)", lambda: jwt.decode(
            root, pub, algorithms=["EdDSA"], options={"verify_aud": False})),
        ("verify 1-hop (cold, no cache)", cold(root)),
        ("verify 3-token chain (cold)", cold(leaf)),
        ("verify 3-token chain, parents seen", new_leaf_known_parents),
        ("verify repeated (cached)", lambda: verify(keys, leaf, now=NOW, revocations=store)),
        ("mint", lambda: mint(keys, issuer="https://auth.example", acting_for="besar",
                              agent="travel-agent", permissions=["flights:*"], ttl=3600,
                              now=NOW)),
    ]
    print(f"{'operation':40} {'p50 us':>9} {'p99 us':>9}   ({len(leaf)} chars for 3 tokens)")
    for name, fn in rows:
        p50, p99 = measure(fn)
        print(f"{name:40} {p50:9.1f} {p99:9.1f}")


if __name__ == "__main__":
    main()
