"""Reserve + commit pairs per second, single process, for MemoryStore and SQLiteStore.

    python benchmarks/bench_budgets.py [--pairs N] [--rounds R] [--threads T]

Each pair is ``reserve`` then ``commit`` of a money spend covered by two budgets (a daily
EUR budget per agent and a per-minute ``calls`` budget), i.e. every pair checks and
debits two budgets atomically, twice. Pairs rotate over 100 agents (so 200 buckets are
live), with amounts varying by agent. Each row is the median of ``--rounds`` rounds on
one store; the GC stays on. Also times ``check`` (the read-only projection
``authorize`` calls). Targets, for the default configuration of each store: MemoryStore
>= 50,000 pairs/s, SQLiteStore >= 3,000. The other SQLite durability modes are printed
for comparison (they pay one or two fsyncs per pair; see docs/budgets.md). With
``--threads T`` the pairs are split over T threads sharing one ledger (for comparison
with budget servers measured under concurrency; CPython runs one thread at a time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
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


def _pairs(ledger: Ledger, pairs: int, offset: int = 0) -> None:
    for i in range(offset, offset + pairs):
        agent, amount, actual = AGENTS[i % len(AGENTS)]
        r = ledger.reserve(agent, "payments:refund", amount, "EUR")
        ledger.commit(r.id, actual)


def pairs_per_second(ledger: Ledger, pairs: int, threads: int = 1) -> tuple[float, float]:
    """(pairs per wall-clock second, pairs per CPU second of this process), with the
    pairs split over ``threads`` threads sharing the ledger."""
    share = pairs // threads
    workers = [threading.Thread(target=_pairs, args=(ledger, share, k * 7))
               for k in range(threads)]
    start, cpu = time.perf_counter(), time.process_time()
    if threads == 1:
        _pairs(ledger, share)
    else:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return share * threads / wall, share * threads / max(cpu, 1e-9)


def check_micros(ledger: Ledger, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        agent, amount, _ = AGENTS[i % len(AGENTS)]
        ledger.check(agent, "payments:refund", amount, "EUR")
    return (time.perf_counter() - start) / n * 1e6


def measure(
    store: BudgetStore, pairs: int, rounds: int, threads: int
) -> tuple[float, float, float]:
    """Median pairs/s, median pairs per CPU s, and µs per check, on one store."""
    ledger = Ledger(SPECS, store)
    pairs_per_second(ledger, 200)  # warm caches (windows, matching, connections)
    results = [pairs_per_second(ledger, pairs, threads) for _ in range(rounds)]
    return (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results),
            check_micros(ledger, min(pairs, 20_000)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000, help="pairs for MemoryStore")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per store (median)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads sharing one ledger (the targets are for 1)")
    args = parser.parse_args()
    threads = max(1, args.threads)
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
            rate, cpu_rate, micros = measure(store, n, args.rounds, threads)
            if threads > 1:
                target = None  # the targets are single-threaded
            shown = "-" if target is None else f"{target:,}"
            flag = "" if target is None else ("ok" if rate >= target else "BELOW")
            print(f"{name:44} {rate:9,.0f} {cpu_rate:10,.0f} {shown:>7} {flag:5} {micros:8.1f}")
            store.close()


if __name__ == "__main__":
    main()
