"""Reserve + commit pairs per second, single process, for MemoryStore and SQLiteStore.

    python benchmarks/bench_budgets.py [--pairs N] [--rounds R]

Each pair is ``reserve`` then ``commit`` of a money spend covered by two budgets (a daily
EUR budget per agent and a per-minute ``calls`` budget), i.e. every pair checks and
debits two budgets atomically, twice. Pairs rotate over 100 agents (so 200 buckets are
live), with amounts varying by agent. Each row is the median of ``--rounds`` rounds on
one store; the GC stays on. Also times ``check`` (the read-only projection
``authorize`` calls). Targets, for the default configuration of each store: MemoryStore
>= 50,000 pairs/s, SQLiteStore >= 3,000. The other SQLite durability modes are printed
for comparison (they pay one or two fsyncs per pair; see docs/budgets.md).
"""

from __future__ import annotations

import argparse
import statistics
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
AGENTS = [(f"agent-{i}", f"{10 + i}.{i % 100:02d}", f"{9 + i}.50") for i in range(100)]


def pairs_per_second(ledger: Ledger, pairs: int) -> tuple[float, float]:
    """(pairs per wall-clock second, pairs per CPU second of this process)."""
    agents = AGENTS * (pairs // len(AGENTS) + 1)
    start, cpu = time.perf_counter(), time.process_time()
    for agent, amount, actual in agents[:pairs]:
        r = ledger.reserve(agent, "payments:refund", amount, "EUR")
        ledger.commit(r.id, actual)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return pairs / wall, pairs / max(cpu, 1e-9)


def check_micros(ledger: Ledger, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        agent, amount, _ = AGENTS[i % len(AGENTS)]
        ledger.check(agent, "payments:refund", amount, "EUR")
    return (time.perf_counter() - start) / n * 1e6


def measure(store: BudgetStore, pairs: int, rounds: int) -> tuple[float, float, float]:
    """Median pairs/s, median pairs per CPU s, and µs per check, on one store."""
    ledger = Ledger(SPECS, store)
    pairs_per_second(ledger, 200)  # warm caches (windows, matching, connections)
    results = [pairs_per_second(ledger, pairs) for _ in range(rounds)]
    return (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results),
            check_micros(ledger, min(pairs, 20_000)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000, help="pairs for MemoryStore")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per store (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows: list[tuple[str, BudgetStore, int, int | None]] = [
            ("MemoryStore (default)", MemoryStore(), args.pairs, 50_000),
            ('SQLiteStore durability="process" (default)',
             SQLiteStore(Path(tmp) / "process.db"), max(2000, args.pairs // 10), 3_000),
            ('SQLiteStore durability="spend"',
             SQLiteStore(Path(tmp) / "spend.db", durability="spend"),
             max(1000, args.pairs // 20), None),
            ('SQLiteStore durability="full"',
             SQLiteStore(Path(tmp) / "full.db", durability="full"),
             max(1000, args.pairs // 25), None),
        ]
        # Per-CPU-second figures matter on a busy machine; an fsync is mostly wall time.
        print(f"{'store':44} {'pairs/s':>9} {'per CPU s':>10} {'target':>7}       check µs")
        for name, store, n, target in rows:
            rate, cpu_rate, micros = measure(store, n, args.rounds)
            shown = "-" if target is None else f"{target:,}"
            flag = "" if target is None else ("ok" if rate >= target else "BELOW")
            print(f"{name:44} {rate:9,.0f} {cpu_rate:10,.0f} {shown:>7} {flag:5} {micros:8.1f}")
            store.close()


if __name__ == "__main__":
    main()
