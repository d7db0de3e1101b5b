"""What each RedisStore script costs the Redis server, in the Cycles wire's steady state.

    python benchmarks/bench_redis_scripts.py [--url redis://127.0.0.1:6379/0] [--rounds 60]

One process drives a ledger over ``RedisStore`` the way ``bench_cycles.py``'s service
does: two covering budgets (per tenant, per agent, 100 agents taking turns), a fresh
idempotency key and a note on every reserve, an idempotency key on every commit,
``--window`` reservations outstanding (32: the load generator's connections). It then
alternates blocks of ``--window`` reserves and ``--window`` commits and prints, per
script: the server's own time per call (``usec_per_call`` of ``EVALSHA`` in ``INFO
commandstats``, the difference over the blocks) and, when the server runs on this
machine, its main thread's CPU per call (``/proc/PID/schedstat``: the script plus reading
the request and writing the reply); and this process's CPU per pair.

``usec_per_call`` is wall time inside the server: on a loaded machine a script that is
preempted counts the wait. Run it against a Redis nobody else is calling (every
``EVALSHA`` on the server is counted). Keys go under a fresh prefix, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from decimal import Decimal
from typing import Any

from policyengine.budgets import BudgetSpec, Ledger, RedisStore

SPECS = [
    BudgetSpec("bench.tenant-tokens", ("llm.completion:*",), Decimal(10**12), "tokens", "day",
               subject="tenant"),
    BudgetSpec("bench.agent-tokens", ("llm.completion:*",), Decimal(10**12), "tokens", "day",
               subject="agent"),
]
NOTE = ('{"a":{"kind":"llm.completion","name":"gpt-4o"},"k":"%s","s":{"agent":"%s",'
        '"tenant":"bench"},"v":"cycles/1"}')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=os.environ.get("POLICYENGINE_BENCH_REDIS",
                                                    "redis://127.0.0.1:6379/0"))
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--window", type=int, default=32)
    args = ap.parse_args()
    store = RedisStore(args.url, prefix=f"bench-scripts-{secrets.token_hex(4)}:",
                       create=True)
    client: Any = store._redis
    pid = int(client.info("server")["process_id"])
    local = os.path.exists(f"/proc/{pid}/schedstat") and "127.0.0.1" in args.url

    def server_ns() -> int:
        if not local:
            return 0
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])

    def evalsha() -> tuple[int, int]:
        found = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        return int(found["calls"]), int(found["usec"])

    ledger = Ledger(SPECS, store=store)
    run = secrets.token_hex(4)
    count = [0]

    def reserve() -> str:
        n = count[0]
        count[0] += 1
        agent = f"agent-{n % 100}"
        return ledger.reserve(agent, "llm.completion:gpt-4o", "100", "tokens", tenant="bench",
                              ttl=60, idempotency_key=f"{run}-{n}-r", grace=5,
                              overage="allow_if_available",
                              note=NOTE % (f"{run}-{n}-r", agent)).id

    def commit(rid: str) -> None:
        ledger.commit(rid, "80", idempotency_key=f"{rid}-c")

    try:
        out = [reserve() for _ in range(args.window)]
        for _ in range(10 * args.window):  # buckets made, a listing index of hundreds
            commit(out.pop(0))
            out.append(reserve())
        totals = {"reserve": [0, 0, 0], "commit": [0, 0, 0]}
        cpu = time.process_time()
        for _ in range(args.rounds):
            calls, usec = evalsha()
            ns = server_ns()
            new = [reserve() for _ in range(args.window)]
            for name, block in (("reserve", None), ("commit", out)):
                if block is not None:
                    for rid in block:
                        commit(rid)
                calls2, usec2 = evalsha()
                ns2 = server_ns()
                t = totals[name]
                t[0] += calls2 - calls
                t[1] += usec2 - usec
                t[2] += ns2 - ns
                calls, usec, ns = calls2, usec2, ns2
            out = new
        pairs = args.rounds * args.window
        client_us = (time.process_time() - cpu) / pairs * 1e6
        print(f"{pairs:,} pairs, {args.window} outstanding, {os.cpu_count()} cpus, load "
              f"average {os.getloadavg()[0]:.1f}")
        print(f"{'script':<8} {'usec_per_call':>13} {'server CPU us/call':>18}")
        for name, (calls, usec, ns) in totals.items():
            cpu_text = f"{ns / calls / 1000:18.1f}" if local else f"{'-':>18}"
            print(f"{name:<8} {usec / calls:13.1f} {cpu_text}")
        print(f"client CPU per pair (this process: ledger, store, socket): {client_us:.0f} us")
    finally:
        store.drop()
        store.close()


if __name__ == "__main__":
    main()
