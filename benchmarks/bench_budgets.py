"""Reserve + commit pairs per second, single process, for MemoryStore and SQLiteStore.

    python benchmarks/bench_budgets.py [--pairs N]

Each pair is ``reserve`` then ``commit`` of a money spend covered by two budgets (a daily
EUR budget per agent and a per-minute ``calls`` budget), i.e. every pair checks and
debits two budgets atomically, twice. Also times ``check`` (the read-only projection
``authorize`` would call). Targets: MemoryStore >= 50,000 pairs/s, SQLiteStore >= 3,000.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from policyengine.budgets import BudgetSpec, Ledger, MemoryStore, SQLiteStore
from policyengine.budgets.store import BudgetStore

SPECS = [
    BudgetSpec("bench.daily", ("payments:*",), Decimal(10**12), "EUR", "day"),
    BudgetSpec("bench.rate", ("payments:*",), Decimal(10**12), "calls", "minute"),
]


def pairs_per_second(store: BudgetStore, pairs: int) -> tuple[float, float]:
    """(pairs per wall-clock second, pairs per CPU second of this process)."""
    ledger = Ledger(SPECS, store)
    for _ in range(min(200, pairs)):  # warm caches (windows, matching, connections)
        ledger.commit(ledger.reserve("agent", "payments:refund", "10", "EUR").id, "9.50")
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(pairs):
        r = ledger.reserve("agent", "payments:refund", "10", "EUR")
        ledger.commit(r.id, "9.50")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return pairs / wall, pairs / max(cpu, 1e-9)


def check_micros(store: BudgetStore, n: int) -> float:
    ledger = Ledger(SPECS, store)
    ledger.check("agent", "payments:refund", "10", "EUR")
    start = time.perf_counter()
    for _ in range(n):
        ledger.check("agent", "payments:refund", "10", "EUR")
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000, help="pairs for MemoryStore")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            ("MemoryStore", MemoryStore(), args.pairs, 50_000),
            ("SQLiteStore synchronous=FULL (default)",
             SQLiteStore(Path(tmp) / "full.db"), max(1000, args.pairs // 20), 3_000),
            ("SQLiteStore synchronous=NORMAL",
             SQLiteStore(Path(tmp) / "normal.db", synchronous="NORMAL"),
             max(2000, args.pairs // 10), 3_000),
        ]
        # CPU-second figures matter on a busy machine; SQLite FULL waits on fsync, which
        # is wall-clock time only.
        print(f"{'store':40} {'pairs/s':>9} {'per CPU s':>10} {'target':>7}       check µs")
        for name, store, n, target in rows:
            rate, cpu_rate = pairs_per_second(store, n)
            micros = check_micros(store, min(n, 20_000))
            flag = "ok" if rate >= target else "BELOW"
            print(f"{name:40} {rate:9,.0f} {cpu_rate:10,.0f} {target:7,} {flag:5} {micros:8.1f}")
            store.close()


if __name__ == "__main__":
    main()
