"""Reserve + commit pairs per second on the shared stores, beside their databases' floors.

    python benchmarks/bench_shared_stores.py [--seconds S] [--procs 1,4] [--only NAME]
                                             [--breakdown]

For each store (``RedisStore``; ``PostgresStore`` with ``synchronous_commit`` off, the
default ``durability="process"``, and on, ``"full"``), with 1 and 4 processes (each its
own store and connection pool, one thread each), on one hot budget (every pair charges
the same global bucket) and on 100 spread budgets (per-agent buckets, agents taking
turns): pairs per second, and p50 / p99 latency of ``reserve`` and of ``commit``.

Each row is printed beside the raw round-trip floor of its database at the same
durability, measured in the same run with the same processes and keys:

* Redis: one server-side script call per operation (a Lua script that checks a limit
  and ``HINCRBY``s one counter), two per pair;
* PostgreSQL: one conditional ``UPDATE ... SET v = v + n WHERE k = $1 AND v + n <= lim
  RETURNING v`` per operation (autocommit, prepared, run through libpq's blocking call
  as the store does), two per pair, with ``synchronous_commit`` off and on.

``--breakdown`` (PostgreSQL) adds a row under each store row: the store's own two
statements per pair (the one-statement reserve and commit, with the parameters the
store sent for them, a fresh reservation id each time) replayed through libpq with no
ledger above them, beside the same floor. Its server CPU is what the store's SQL costs
the database; the store row's CPU beyond it is the ledger's and the store's Python, and
what that Python's cache footprint adds to the server's share.

The last columns are CPU per operation, client + server, of the store and of the floor
(PostgreSQL, when the server runs on this machine: the workers' and their backends'
run time from ``/proc/PID/schedstat``) and their ratio. Wall-clock rates on a loaded
machine mostly measure the scheduler; CPU per operation is what caps throughput once
the cores are busy, and the load moves it far less.

Goals (issue 14): each store within 2x of its floor (``floor/store`` <= 2), RedisStore
above 2,600 pairs/s, PostgresStore >= 2,000 pairs/s with ``synchronous_commit`` off.
Set POLICYENGINE_BENCH_POSTGRES / POLICYENGINE_BENCH_REDIS to point elsewhere than
127.0.0.1. Everything is created in a schema / key prefix of its own and dropped after.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from policyengine.budgets import BudgetSpec, Ledger, PostgresStore, RedisStore

POSTGRES = os.environ.get("POLICYENGINE_BENCH_POSTGRES",
                          "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("POLICYENGINE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
LIMIT = Decimal(10**12)
HOT = [BudgetSpec("bench.hot", ("payments:*",), LIMIT, "EUR", "day", subject="global")]
SPREAD = [BudgetSpec("bench.spread", ("payments:*",), LIMIT, "EUR", "day")]
AGENTS = [f"agent-{i}" for i in range(100)]

# -- one worker process ------------------------------------------------------------------

# pairs, reserve latencies, commit latencies, CPU ns of the worker and of its PostgreSQL
# backend (-1: not measured)
Result = tuple[int, list[float], list[float], int, int]


def _cpu_ns(pid: int | str) -> int:
    """CPU time a process (or ``self``) has run, in ns, from the scheduler's own count
    (exact, unlike tick-sampled accounting); -1 where /proc does not have it (another
    OS, or a database on another machine)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def _backend_cpu(pid: int | None, start: int) -> int:
    end = -1 if pid is None else _cpu_ns(pid)
    return -1 if start < 0 or end < 0 else end - start


def _store_worker(kind: str, name: str, hot: bool, seconds: float, seed: int) -> Result:
    store: Any
    if kind == "redis":
        store = RedisStore(REDIS, prefix=name)
    else:
        store = PostgresStore(POSTGRES, schema=name,
                              durability="full" if kind == "postgres-sync" else "process")
    ledger = Ledger(HOT if hot else SPREAD, store)
    ledger.reserve(AGENTS[0], "payments:x", "0.01", "EUR")  # buckets made, connection open
    backend = None if kind == "redis" else int(store._call("SELECT pg_backend_pid()", ()))
    reserve_lat: list[float] = []
    commit_lat: list[float] = []
    clock = time.perf_counter
    pairs, i = 0, seed
    own0, backend0 = _cpu_ns("self"), -1 if backend is None else _cpu_ns(backend)
    deadline = clock() + seconds
    while True:
        t0 = clock()
        if t0 >= deadline:
            break
        agent = AGENTS[i % 100]
        i += 1
        r = ledger.reserve(agent, "payments:x", "10.00", "EUR")
        t1 = clock()
        ledger.commit(r.id, "9.50")
        t2 = clock()
        reserve_lat.append(t1 - t0)
        commit_lat.append(t2 - t1)
        pairs += 1
    own, server = _cpu_ns("self") - own0, _backend_cpu(backend, backend0)
    store.close()
    return pairs, reserve_lat, commit_lat, own, server


def _sql_worker(kind: str, name: str, hot: bool, seconds: float, seed: int) -> Result:
    """The store's SQL alone: each agent's reserve and commit are made once through the
    ledger, their statements and parameters kept, then replayed on the store's own
    connection (a fresh id, the time and the expiry renewed), so the client does only
    what the driver does."""
    store = PostgresStore(POSTGRES, schema=name,
                          durability="full" if kind == "postgres-sync" else "process")
    ledger = Ledger(HOT if hot else SPREAD, store)
    sent: list[tuple[bytes, list[bytes | None]]] = []
    real = store._exec

    def spy(stmt: bytes, params: list[bytes | None], decline: str = "") -> bytes | None:
        sent.append((stmt, list(params)))
        return real(stmt, params, decline)

    store._exec = spy  # type: ignore[method-assign]
    pairs_sent = []
    for agent in AGENTS[:1] if hot else AGENTS:
        sent.clear()
        r = ledger.reserve(agent, "payments:x", "10.00", "EUR")
        ledger.commit(r.id, "9.50")
        if [s for s, _ in sent] != [b"policyengine_budget_reserve",
                                    b"policyengine_budget_finish"]:
            raise SystemExit(f"the store did not take its one-statement paths: {sent}")
        pairs_sent.append((r.id.encode(), sent[0][1], sent[1][1]))
    store._exec = real  # type: ignore[method-assign]
    conn = store._checkout()
    pgconn = conn.pgconn
    backend = conn.info.backend_pid
    reserve_lat: list[float] = []
    commit_lat: list[float] = []
    clock = time.perf_counter
    now = store.clock
    pairs, i = 0, seed
    prefix = f"rsv_{os.getpid():08x}".encode()
    own0, backend0 = _cpu_ns("self"), _cpu_ns(backend)
    deadline = clock() + seconds
    while True:
        t0 = clock()
        if t0 >= deadline:
            break
        old, rp, fp = pairs_sent[i % len(pairs_sent)]
        i += 1
        new = b"%s%016x" % (prefix, i)
        at = now()
        rp = [None if p is None else p.replace(old, new) for p in rp]
        rp[8], rp[9] = repr(at + 60).encode(), repr(at).encode()
        if pgconn.exec_prepared(b"policyengine_budget_reserve", rp).get_value(0, 0) != b"1":
            raise SystemExit("the replayed reserve declined")
        t1 = clock()
        fp = [None if p is None else p.replace(old, new) for p in fp]
        fp[7] = repr(now()).encode()
        if pgconn.exec_prepared(b"policyengine_budget_finish", fp).get_value(0, 0) != b"1":
            raise SystemExit("the replayed commit declined")
        t2 = clock()
        reserve_lat.append(t1 - t0)
        commit_lat.append(t2 - t1)
        pairs += 1
    own, server = _cpu_ns("self") - own0, _backend_cpu(backend, backend0)
    store._checkin(conn)
    store.close()
    return pairs, reserve_lat, commit_lat, own, server


_FLOOR_SCRIPT = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if v + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return false end
return redis.call('HINCRBY', KEYS[1], 'v', ARGV[1])
"""


def _floor_worker(kind: str, name: str, hot: bool, seconds: float, seed: int) -> Result:
    """Two raw operations per "pair": the least any store of that database can do."""
    op: Callable[[str, int], object]
    close: Callable[[], None]
    backend: int | None = None
    if kind == "redis":
        import redis
        client = redis.Redis.from_url(REDIS)
        script = client.register_script(_FLOOR_SCRIPT)

        def op(key: str, amount: int) -> object:
            return script(keys=[name + key], args=[amount, 10**17])

        close = client.close
    else:
        import psycopg
        conn = psycopg.connect(POSTGRES, autocommit=True)
        conn.execute("SELECT set_config('synchronous_commit', %s, false)",
                     ("on" if kind == "postgres-sync" else "off",))
        # Prepared once, run with libpq's blocking call: the same driver path as the
        # store's, so the gap is what the store's SQL does beyond this one UPDATE.
        conn.pgconn.prepare(b"floor", f'UPDATE "{name}".floor SET v = v + $1::bigint '
                            "WHERE k = $2 AND v + $1::bigint <= 10^17 RETURNING v".encode())
        pgconn = conn.pgconn

        def op(key: str, amount: int) -> object:
            return pgconn.exec_prepared(b"floor", [str(amount).encode(), key.encode()]
                                        ).get_value(0, 0)

        close = conn.close
        backend = conn.info.backend_pid
    reserve_lat: list[float] = []
    commit_lat: list[float] = []
    clock = time.perf_counter
    pairs, i = 0, seed
    own0, backend0 = _cpu_ns("self"), -1 if backend is None else _cpu_ns(backend)
    deadline = clock() + seconds
    while True:
        t0 = clock()
        if t0 >= deadline:
            break
        key = "hot" if hot else AGENTS[i % 100]
        i += 1
        op(key, 1000)
        t1 = clock()
        op(key, -50)
        t2 = clock()
        reserve_lat.append(t1 - t0)
        commit_lat.append(t2 - t1)
        pairs += 1
    own, server = _cpu_ns("self") - own0, _backend_cpu(backend, backend0)
    close()
    return pairs, reserve_lat, commit_lat, own, server


def _run(worker: Callable[..., Result], procs: int, *args: Any) -> tuple[float, Result]:
    """Pairs/s over ``procs`` processes started together, the merged latencies, and
    the CPU summed over the workers (and over their backends, if every one was
    measured)."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        start = time.perf_counter()
        results = pool.starmap(worker, [(*args, k * 37) for k in range(procs)])
        wall = time.perf_counter() - start
    pairs = sum(r[0] for r in results)
    seconds = args[-1]
    server = -1 if any(r[4] < 0 for r in results) else sum(r[4] for r in results)
    merged = (pairs, [x for r in results for x in r[1]], [x for r in results for x in r[2]],
              sum(r[3] for r in results), server)
    del wall  # processes start at slightly different times: rate over the fixed window
    return pairs / seconds, merged


def _per_op(own: int, server: int, pairs: int) -> tuple[float, float]:
    """CPU µs per operation (two per pair) of the clients and of their backends."""
    ops = max(1, 2 * pairs)
    return own / ops / 1000, (server / ops / 1000 if server >= 0 else float("nan"))


def _cpu_text(cpu: tuple[float, float]) -> str:
    if cpu[1] != cpu[1]:  # NaN: the server's share was not measured
        return f"{cpu[0]:.0f} + ?"
    return f"{cpu[0]:.0f} + {cpu[1]:.0f} = {cpu[0] + cpu[1]:.0f}"


def _ratio(cpu: tuple[float, float], floor: tuple[float, float]) -> str:
    if cpu[1] != cpu[1] or floor[1] != floor[1]:
        return "-"
    return f"{(cpu[0] + cpu[1]) / (floor[0] + floor[1]):.2f}"


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


# -- set-up of the namespaces ------------------------------------------------------------


def _setup(kind: str) -> str:
    name = f"pe_bench_{os.getpid()}_{secrets.token_hex(3)}"
    if kind == "redis":
        RedisStore(REDIS, prefix=name + ":", create=True).close()
        return name + ":"
    import psycopg
    PostgresStore(POSTGRES, schema=name).close()
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{name}".floor (k text PRIMARY KEY, v bigint NOT NULL)')
        conn.execute(f'INSERT INTO "{name}".floor SELECT k, 0 FROM unnest(%s::text[]) k',
                     (["hot", *AGENTS],))
    return name


def _teardown(kind: str, name: str) -> None:
    if kind == "redis":
        store = RedisStore(REDIS, prefix=name)
        store.drop()
        store.close()
        import redis
        client = redis.Redis.from_url(REDIS)
        for key in client.scan_iter(match=name + "*"):
            client.delete(key)
        client.close()
    else:
        import psycopg
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--procs", default="1,4")
    parser.add_argument("--only", choices=["redis", "postgres", "postgres-sync"])
    parser.add_argument("--breakdown", action="store_true",
                        help="PostgreSQL: also the store's SQL replayed without the ledger")
    args = parser.parse_args()
    kinds = [args.only] if args.only else ["redis", "postgres", "postgres-sync"]
    labels = {"redis": "RedisStore", "postgres": "PostgresStore sync_commit=off",
              "postgres-sync": "PostgresStore sync_commit=on"}
    print(f"{'store':32} {'procs':>5} {'budgets':>7} {'pairs/s':>8} {'floor':>8} "
          f"{'floor/store':>11} {'reserve p50/p99 ms':>19} {'commit p50/p99 ms':>18} "
          f"{'floor op p50/p99 ms':>19} {'CPU us/op client+server':>24} "
          f"{'floor CPU':>13} {'CPU ratio':>9}")
    for kind in kinds:
        name = _setup(kind)
        try:
            for procs in [int(p) for p in args.procs.split(",")]:
                for hot in (True, False):
                    rate, (pairs, res_lat, com_lat, own, srv) = _run(
                        _store_worker, procs, kind, name, hot, args.seconds)
                    floor, (fpairs, f1, f2, fown, fsrv) = _run(
                        _floor_worker, procs, kind, name, hot, args.seconds)
                    rows = [(labels[kind], rate, pairs, res_lat, com_lat, own, srv)]
                    if args.breakdown and kind != "redis":
                        srate, (spairs, s1, s2, sown, ssrv) = _run(
                            _sql_worker, procs, kind, name, hot, args.seconds)
                        rows.append(("  its SQL alone", srate, spairs, s1, s2, sown, ssrv))
                    fcpu = _per_op(fown, fsrv, fpairs)
                    for label, rate, pairs, res_lat, com_lat, own, srv in rows:
                        cpu = _per_op(own, srv, pairs)
                        print(
                            f"{label:32} {procs:>5} {'1 hot' if hot else '100':>7} "
                            f"{rate:>8,.0f} {floor:>8,.0f} {floor / rate:>11.2f} "
                            f"{_pct(res_lat, .5):>9.2f}/{_pct(res_lat, .99):<9.2f} "
                            f"{_pct(com_lat, .5):>8.2f}/{_pct(com_lat, .99):<9.2f} "
                            f"{_pct(f1 + f2, .5):>9.2f}/{_pct(f1 + f2, .99):<9.2f} "
                            f"{_cpu_text(cpu):>24} {_cpu_text(fcpu):>13} "
                            f"{_ratio(cpu, fcpu):>9}",
                            flush=True,
                        )
        finally:
            _teardown(kind, name)


if __name__ == "__main__":
    main()
