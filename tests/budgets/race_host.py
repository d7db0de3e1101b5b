"""One simulated host of the race harness (tests/budgets/test_budgets_race.py).

Run as a process group of its own: ``python race_host.py URL LOGDIR HOST PROCS THREADS
SECONDS SEED``. It forks PROCS worker processes, each with its own store (its own
connection pool) and THREADS threads mixing reserve, commit, release, extend, direct
debits and checks on shared budgets of several levels for SECONDS seconds.

Every worker appends to its own log, one unbuffered write per line, so a SIGKILL loses
at most the line being written::

    P <pid>                                   the worker started
    B <op> <agent> <tenant> <amount> <time>   a spend is about to be committed/recorded
    D <op> <start> <time>                     ... and was (the store has it)
    F <op> <code> <time>                      ... and was refused: nothing was spent
    U <op> <time>                             ... the store failed: in doubt
    E <code> <time>                           any other call failed with this code
    S <ok> <start> <time>                     any other call succeeded (ok: check's answer)
    X <repr>                                  an exception that is not a BudgetError
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys
import threading
import time
from decimal import Decimal
from typing import Any

from policyengine.budgets import (
    BudgetError,
    BudgetSpec,
    Ledger,
    store_from_url,
)

AGENTS = [f"agent-{i}" for i in range(8)]
TENANT = {agent: f"tenant-{i % 2}" for i, agent in enumerate(AGENTS)}
#: Per agent, per tenant, for everyone, and a global call count: four levels per spend.
SPECS = [
    BudgetSpec("race.agent", ("payments:*",), Decimal(150), "EUR", "day"),
    BudgetSpec("race.tenant", ("payments:*",), Decimal(400), "EUR", "day", subject="tenant"),
    BudgetSpec("race.global", ("payments:*",), Decimal(700), "EUR", "day", subject="global"),
    BudgetSpec("race.calls", ("payments:*",), Decimal(100000), "calls", "day",
               subject="global"),
]


def _worker(url: str, log_path: str, threads: int, seconds: float, seed: int) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def log(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    log(f"P {os.getpid()}")
    ledger = Ledger(SPECS, store_from_url(url))
    deadline = time.time() + seconds
    counter = iter(range(10**9))
    lock = threading.Lock()

    def next_op() -> str:
        with lock:
            return f"{os.getpid()}-{next(counter)}"

    def spend(op: str, agent: str, amount: int, call: Any, *args: Any, **kwargs: Any) -> None:
        start = time.time()
        log(f"B {op} {agent} {TENANT[agent]} {amount} {start:.6f}")
        try:
            call(*args, **kwargs)
        except BudgetError as exc:
            if exc.code in ("store_unavailable", "store_conflict"):
                log(f"U {op} {time.time():.6f}")
            else:
                log(f"F {op} {exc.code} {time.time():.6f}")
            return
        log(f"D {op} {start:.6f} {time.time():.6f}")

    def other(call: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            result = call(*args, **kwargs)
        except BudgetError as exc:
            log(f"E {exc.code} {time.time():.6f}")
            return None
        ok = getattr(result, "allowed", True)
        log(f"S {int(bool(ok))} {start:.6f} {time.time():.6f}")
        return result

    def run(rng: random.Random) -> None:
        while time.time() < deadline:
            agent = rng.choice(AGENTS)
            tenant = TENANT[agent]
            amount = rng.randint(1, 9)
            pick = rng.random()
            try:
                if pick < 0.25:  # a direct debit
                    spend(next_op(), agent, amount, ledger.record,
                          agent, "payments:pay", amount, "EUR", tenant=tenant)
                    continue
                if pick < 0.35:
                    other(ledger.check, agent, "payments:pay", amount, "EUR", tenant=tenant)
                    continue
                ttl = 1 if pick > 0.9 else 3
                res = other(ledger.reserve, agent, "payments:pay", amount, "EUR",
                            ttl=ttl, tenant=tenant)
                if res is None:
                    continue
                rid = res.id
                if pick < 0.6:  # commit part of it
                    part = rng.randint(1, amount)
                    spend(next_op(), agent, part, ledger.commit, rid, part)
                elif pick < 0.75:  # extend, then commit all of it
                    if other(ledger.extend, rid, 3) is not None:
                        spend(next_op(), agent, amount, ledger.commit, rid, amount)
                elif pick < 0.9:
                    other(ledger.release, rid)
                # else: abandoned; its hold must go at its expiry
            except Exception as exc:
                log(f"X {exc!r}")

    workers = [threading.Thread(target=run, args=(random.Random(seed * 100 + i),))
               for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    ledger.store.close()
    os.close(fd)


def main() -> None:
    url, log_dir, host, procs, threads, seconds, seed = sys.argv[1:8]
    ctx = multiprocessing.get_context("fork")
    children = [
        ctx.Process(target=_worker, args=(
            url, os.path.join(log_dir, f"host{host}-proc{i}.log"), int(threads),
            float(seconds), int(seed) * 10 + i,
        ))
        for i in range(int(procs))
    ]
    for child in children:
        child.start()
    for child in children:
        child.join()


if __name__ == "__main__":
    main()
