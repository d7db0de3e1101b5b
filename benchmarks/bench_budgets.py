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

Then rate-limit admissions per second (``RateLimiter.admit``: one ``ratelimit`` of
1,000,000 per second covering the call, 100 agents taking turns, every call admitted and
counted) on every store: MemoryStore, SQLiteStore and, when reachable, PostgresStore and
RedisStore (``POLICYENGINE_BENCH_POSTGRES`` / ``POLICYENGINE_BENCH_REDIS``, default
127.0.0.1; a scratch schema / key prefix, dropped after). ``--rates-only`` skips the pairs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

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
    parser.add_argument("--admissions", type=int, default=20_000,
                        help="rate-limit admissions for MemoryStore (a tenth on servers)")
    parser.add_argument("--rates-only", action="store_true", help="skip the pairs")
    args = parser.parse_args()
    threads = max(1, args.threads)
    if not args.rates_only:
        pairs_table(args, threads)
    rate_table(args.admissions)


def _rate_stores(tmp: str) -> list[tuple[str, Any, Callable[[], None]]]:
    """(name, store, teardown) for every store this machine can open."""
    import os
    import secrets
    found: list[tuple[str, Any, Callable[[], None]]] = [
        ("MemoryStore", MemoryStore(), lambda: None),
        ('SQLiteStore durability="process"', SQLiteStore(Path(tmp) / "rates.db"), lambda: None),
    ]
    name = f"bench_rates_{secrets.token_hex(4)}"
    try:
        from policyengine.budgets import PostgresStore
        pg = PostgresStore(os.environ.get("POLICYENGINE_BENCH_POSTGRES",
                                          "postgresql://postgres@127.0.0.1:5432/test"),
                           schema=name, connect_timeout=3)
        found.append(('PostgresStore durability="process"', pg, pg.drop))
    except Exception as exc:
        print(f"(PostgresStore skipped: {type(exc).__name__})")
    try:
        from policyengine.budgets import RedisStore
        rd = RedisStore(os.environ.get("POLICYENGINE_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
                        prefix=name + ":", timeout=3, create=True)
        found.append(("RedisStore", rd, rd.drop))
    except Exception as exc:
        print(f"(RedisStore skipped: {type(exc).__name__})")
    return found


def _floor(store: Any, n: int) -> float | None:
    """Round trips per second doing nothing (Redis PING, PostgreSQL SELECT 1), measured
    right after the store's own figure: what the admission costs beyond the network."""
    if hasattr(store, "_redis"):
        call: Callable[[], object] = store._redis.ping
    elif hasattr(store, "schema"):
        def call() -> object:
            return store._call("SELECT 1", ())
    else:
        return None
    wall0 = time.perf_counter()
    for _ in range(n):
        call()
    return n / (time.perf_counter() - wall0)


def rate_table(admissions: int) -> None:
    from policyengine.budgets.ratelimit import RateLimiter, RateLimitSpec
    spec = RateLimitSpec("bench.calls", ("payments:*",), 1_000_000, "second", 1_000_000)
    agents = [a for a, _, _ in AGENTS]
    print(f"\n{'rate-limit admissions':44} {'admits/s':>9} {'per CPU s':>10} "
          f"{'floor/s':>9}  (floor: one round trip doing nothing, same connection pool)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, store, teardown in _rate_stores(tmp):
            limiter = RateLimiter([spec], store)  # the store's clock decides
            n = admissions if isinstance(store, MemoryStore) else max(500, admissions // 10)
            for agent in agents:  # warm: keys exist, statements prepared
                limiter.admit(agent, "payments:refund")
            wall0, cpu0 = time.perf_counter(), time.process_time()
            refused = 0
            for i in range(n):
                if limiter.admit(agents[i % 100], "payments:refund") is not None:
                    refused += 1
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            assert refused == 0, f"{refused} refused under a limit nobody reaches"
            floor = _floor(store, n)
            shown = "-" if floor is None else f"{floor:,.0f}"
            print(f"{name:44} {n / wall:9,.0f} {n / max(cpu, 1e-9):10,.0f} {shown:>9}")
            teardown()
            store.close()
    # The whole decision, side by side: what a covering rate limit adds to authorize.
    from policyengine import Engine
    plain = Engine.from_source("permit p: payments:*\n")
    limited = Engine.from_source("permit p: payments:*\n"
                                 "ratelimit r: payments:* 1000000 per second burst 1000000\n")
    for label, engine in (("authorize, no rate limit", plain),
                          ("authorize + one ratelimit (MemoryStore)", limited)):
        for agent in agents:
            engine.authorize(agent, "payments:refund")
        cpu0 = time.process_time()
        for i in range(admissions):
            engine.authorize(agents[i % 100], "payments:refund")
        cpu = time.process_time() - cpu0
        print(f"{label:44} {'':9} {admissions / max(cpu, 1e-9):10,.0f}"
              f"   {cpu / admissions * 1e6:.2f} µs CPU each")


def pairs_table(args: argparse.Namespace, threads: int) -> None:
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
