"""Proof under concurrency: threads, processes and SIGKILL never overspend or leak."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import Clock

from policyengine.budgets import (
    BudgetError,
    BudgetSpec,
    Ledger,
    MemoryStore,
    SQLiteStore,
)

LIMIT = Decimal(1000)
SPECS = [
    BudgetSpec("t.money", ("payments:*",), LIMIT, "EUR", "day", subject="global"),
    BudgetSpec("t.calls", ("payments:*",), Decimal(400), "calls", "day", subject="global"),
]
NOW = 1_773_144_000.0  # 2026-03-10T12:00:00Z, fixed so no window rolls over mid-test


def _race(ledger: Ledger, seed: int, ops: int) -> tuple[Decimal, int]:
    """Reserve / commit / release at random; return (committed EUR, admitted calls)."""
    rng = random.Random(seed)
    spent = Decimal(0)
    calls = 0
    for _ in range(ops):
        amount = Decimal(rng.randint(1, 9000)) / 100
        try:
            r = ledger.reserve("bot", "payments:refund", amount, "EUR")
        except BudgetError as exc:
            assert exc.code == "budget_exceeded"
            continue
        calls += 1
        if rng.random() < 0.3:
            ledger.release(r.id)
            calls -= 1  # a released reservation gives its call back
        else:
            actual = (amount * Decimal(rng.randint(0, 100)) / 100).quantize(Decimal("0.01"))
            ledger.commit(r.id, actual)
            spent += actual
    return spent, calls


def _check_final(ledger: Ledger, spent: Decimal, calls: int) -> None:
    money, call_budget = ledger.balances("bot")
    assert money.reserved == 0 and call_budget.reserved == 0
    assert money.spent == spent <= LIMIT
    assert call_budget.spent == calls <= 400


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_eight_threads_never_overspend(kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "l.db")
    ledger = Ledger(SPECS, store, clock=Clock(NOW))
    results: list[tuple[Decimal, int]] = []
    lock = threading.Lock()
    # A watcher samples balances while the race runs: admitted never exceeds the limit.
    stop = threading.Event()
    peaks: list[Decimal] = []

    def watch() -> None:
        while not stop.is_set():
            b = ledger.balances("bot")[0]
            peaks.append(b.spent + b.reserved)

    def work(seed: int) -> None:
        result = _race(ledger, seed, 150 if kind == "sqlite" else 400)
        with lock:
            results.append(result)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert len(results) == 8
    assert max(peaks) <= LIMIT
    _check_final(ledger, sum((r[0] for r in results), Decimal(0)), sum(r[1] for r in results))


def _process_worker(path: str, seed: int, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    ledger = Ledger(SPECS, SQLiteStore(path), clock=Clock(NOW))
    queue.put(_race(ledger, seed, 120))


def test_four_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    SQLiteStore(path).close()
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(path, i, queue)) for i in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ledger = Ledger(SPECS, SQLiteStore(path), clock=Clock(NOW))
    _check_final(ledger, sum((r[0] for r in results), Decimal(0)), sum(r[1] for r in results))


def _killed_worker(path: str, log: str, durability: str) -> None:
    big = [BudgetSpec("k.money", ("payments:*",), Decimal(10**9), "EUR", "day")]
    ledger = Ledger(big, SQLiteStore(path, durability=durability),  # type: ignore[arg-type]
                    clock=Clock(NOW))
    with open(log, "a", buffering=1) as out:
        i = 0
        while True:
            i += 1
            r = ledger.reserve("bot", "payments:refund", "2.00", "EUR", ttl=30)
            out.write(f"R {r.id}\n")
            if i % 3:  # leave every third reservation open, as a crash would
                ledger.commit(r.id, "1.00")
                out.write(f"C {r.id}\n")  # written only after commit returned


@pytest.mark.parametrize("durability", ["process", "spend", "full"])
def test_sigkill_loses_no_commit_and_leaks_no_reservation(
    tmp_path: Path, durability: str
) -> None:
    path, log = str(tmp_path / "k.db"), str(tmp_path / "log.txt")
    SQLiteStore(path).close()
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    child = ctx.Process(target=_killed_worker, args=(path, log, durability))
    child.start()
    deadline = time.time() + 20
    while time.time() < deadline:
        time.sleep(0.2)
        if os.path.exists(log) and Path(log).read_text().count("\n") > 300:
            break
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)  # mid-operation, whatever it was doing
    child.join()
    assert child.exitcode == -signal.SIGKILL
    lines = [ln.split() for ln in Path(log).read_text().splitlines(keepends=True)
             if ln.endswith("\n")]
    committed = {rid for kind, rid in lines if kind == "C"}
    assert len(committed) > 50

    big = [BudgetSpec("k.money", ("payments:*",), Decimal(10**9), "EUR", "day")]
    store = SQLiteStore(path)
    clock = Clock(NOW)
    ledger = Ledger(big, store, clock=clock)
    for rid in committed:
        assert ledger.get(rid).status == "committed"
    balance = ledger.balances("bot")[0]
    # Every reported commit is there; at most one more commit may have landed after
    # its log line was cut off by the kill.
    assert len(committed) <= balance.spent <= len(committed) + 1
    # Open reservations (left on purpose, or interrupted) stop counting after their TTL.
    clock.t = NOW + 31
    after = ledger.balances("bot")[0]
    assert after.reserved == 0
    assert after.spent == balance.spent
