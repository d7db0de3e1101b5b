"""The Cycles wire under load: reserve + commit pairs per second over HTTP.

Starts ``policyengine serve`` (a subprocess, access log off, file watching off) over a
policy with two covering budgets per pair (per tenant and per agent), a Cycles API key,
and a budget store (default: a SQLite file; ``--store memory:`` or a shared store URL),
with 1 and then 2 workers. Each of ``--connections`` keep-alive connections runs the
runcycles protocol closed loop: ``POST /v1/reservations`` (100 TOKENS, a fresh
idempotency key), read the ``reservation_id``, ``POST /v1/reservations/{id}/commit``
(80 TOKENS), and again. A pair counts only when the create answered 200 and the commit
200 COMMITTED; the run fails on anything else. At the end the service's balances must
show exactly the committed spend (nothing lost, nothing double-charged).

    python benchmarks/bench_cycles.py                      # SQLite, 1 and 2 workers, 5 s
    python benchmarks/bench_cycles.py --quick              # 2 s a row
    python benchmarks/bench_cycles.py --store redis://127.0.0.1:6379/0?prefix=bench:
    python benchmarks/bench_cycles.py --store 'postgresql://postgres@127.0.0.1:5432/test?schema=bench'
    python benchmarks/bench_cycles.py --generators 2       # two load generator processes

The Cycles reference server (Java, Redis) reports about 2,600 pairs/s with 32 client
threads; this runs both server and load generator on the same machine. Columns:

* ``pairs/s``: wall clock; on a shared machine, what share of the cores the run got;
* ``p50`` / ``p99``: per request (send to last byte), queueing in the service included;
* ``server CPU us/pair``: the serve process and its workers (user + system, /proc);
* ``generator CPU us/pair`` and ``generator share``: the load generator's own CPU (it
  runs on the same cores: this is what it takes from the service);
* ``CPU-bound pairs/s``: what the machine's cores would do at these CPU costs were they
  the run's alone (a worker uses one core at most; service and generator share them
  all): on a loaded machine the figure to compare, as CPU per pair moves far less than
  the rate.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _loadgen  # noqa: E402

POLICY = """namespace bench
budget tenant-tokens: llm.completion:* limit 1000000000000 tokens per day per tenant
budget agent-tokens: llm.completion:* limit 1000000000000 tokens per day per agent
"""
KEY = "bench-cycles-key"
AGENTS = 100


_HEAD = "host: 127.0.0.1\r\ncontent-type: application/json\r\nx-cycles-api-key: " + KEY


def _post(path: bytes, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\n%s\r\ncontent-length: %d\r\n\r\n%s" % (
        path, _HEAD.encode(), len(body), body)


def _pairs(tag: str, deadline: float, counts: list[int], failures: list[bytes]
           ) -> _loadgen.Step:
    """One connection's runcycles closed loop: create (a fresh idempotency key), read the
    ``reservation_id``, commit, again until ``deadline``; ``counts[0]`` counts pairs."""
    clock = time.perf_counter
    prefix = tag.encode()
    state = {"n": 0, "committing": False}

    def step(status: int | None, body: bytes | None) -> bytes | None:
        n = state["n"]
        if status is not None:
            assert body is not None
            if not state["committing"]:
                if status != 200:
                    failures.append(body)
                    return None
                at = body.index(b'"reservation_id":"') + 18
                rid = body[at:body.index(b'"', at)]
                state["committing"] = True
                return _post(b"/v1/reservations/%s/commit" % rid,
                             b'{"idempotency_key":"%s-%d-c","actual":{"unit":"TOKENS",'
                             b'"amount":80}}' % (prefix, n))
            if status != 200 or b'"COMMITTED"' not in body:
                failures.append(body)
                return None
            counts[0] += 1
            state["committing"] = False
            n = state["n"] = n + 1
        if clock() >= deadline:
            return None
        return _post(b"/v1/reservations",
                     b'{"idempotency_key":"%s-%d-r","subject":{"tenant":"bench",'
                     b'"agent":"agent-%d"},"action":{"kind":"llm.completion","name":'
                     b'"gpt-4o"},"estimate":{"unit":"TOKENS","amount":100},'
                     b'"ttl_ms":60000}' % (prefix, n, n % AGENTS))

    return step


async def _drive(port: int, tag: str, connections: int, seconds: float
                 ) -> tuple[int, float, list[float], list[bytes]]:
    """Pairs, seconds, request latencies and failures of ``connections`` loops."""
    latencies: list[float] = []
    failures: list[bytes] = []
    counts = [0]
    start = time.perf_counter()
    await _loadgen.closed_loop("127.0.0.1", port, [
        _pairs(f"{tag}-{c}", start + seconds, counts, failures)
        for c in range(connections)], latencies)
    return counts[0], time.perf_counter() - start, latencies, failures


def _generator(args: tuple[int, str, int, float]
               ) -> tuple[int, float, list[float], list[bytes], float]:
    """One load generator process's run, and the CPU seconds it used."""
    port, tag, connections, seconds = args
    cpu = time.process_time()
    result = _loadgen.event_loop_runner()(_drive(port, tag, connections, seconds))
    return (*result, time.process_time() - cpu)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--generators", type=int, default=1)
    ap.add_argument("--connections", type=int, default=32, help="per generator")
    ap.add_argument("--store", default=None,
                    help="budget store URL (default: a fresh SQLite file per row)")
    args = ap.parse_args()
    seconds = 2.0 if args.quick else 5.0
    # Idempotency keys of this run only: a shared store keeps a past run's keys (a day),
    # and the same keys again would be replays, not new pairs.
    run = os.urandom(4).hex()
    import httpx

    from policyengine.server import hash_secret

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench.policy").write_text(POLICY)
        creds = Path(tmp) / "credentials.json"
        creds.write_text(json.dumps({"cyclesKeys": [
            {"name": "bench", "keyHash": hash_secret(KEY), "tenant": "bench"}]}))
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average "
              f"{os.getloadavg()[0]:.1f}, {args.generators} generator process(es) x "
              f"{args.connections} connections, {seconds:.0f} s a row")
        print(f"{'workers':>7} {'store':<24} {'pairs/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'server CPU us/pair':>18} {'generator CPU us/pair':>21} "
              f"{'generator share':>15} {'CPU-bound pairs/s':>17}")
        for row, workers in enumerate(int(w) for w in args.workers.split(",")):
            store = args.store or f"sqlite:///{tmp}/ledger-{row}.db"
            if store.split(":", 1)[0] in ("redis", "rediss", "unix"):
                # A Redis prefix is created once, as an operator does (policyengine store
                # init); the workers open it without create.
                subprocess.run([sys.executable, "-m", "policyengine", "store", "init", store],
                               check=True, stdout=subprocess.DEVNULL)
            if workers > 1 and store.startswith("memory:"):
                print(f"{workers:>7} memory: is per process; {workers} workers would not "
                      "share one budget (skipped)")
                continue
            port = _loadgen.free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "policyengine", "serve", tmp, "--port", str(port),
                 "--workers", str(workers), "--credentials", str(creds), "--no-access-log",
                 "--watch-interval", "0", "--log-level", "warning", "--budget-store", store],
                stdout=subprocess.DEVNULL)
            try:
                _loadgen.wait_for_port("127.0.0.1", port)
                time.sleep(0.5)
                url = f"http://127.0.0.1:{port}"
                _generator((port, f"warm{row}{run}", args.connections, 0.5))
                before = _spent(httpx, url)
                cpu_before = _server_cpu(proc.pid)
                jobs = [(port, f"w{row}g{g}{run}", args.connections, seconds)
                        for g in range(args.generators)]
                if args.generators == 1:
                    results = [_generator(jobs[0])]
                else:
                    with multiprocessing.get_context("spawn").Pool(args.generators) as pool:
                        results = pool.map(_generator, jobs)
                cpu = _server_cpu(proc.pid) - cpu_before
                gen_cpu = sum(r[4] for r in results)
                pairs = sum(r[0] for r in results)
                rate = sum(r[0] / r[1] for r in results)
                latencies = sorted(x for r in results for x in r[2])
                failures = [f for r in results for f in r[3]]
                if failures:
                    raise SystemExit(f"unexpected answer: {failures[0][:300]!r}")
                spent = _spent(httpx, url) - before
                if spent != 80 * pairs:
                    raise SystemExit(f"balances show {spent} tokens spent, the pairs {80 * pairs}")
                q = statistics.quantiles(latencies, n=100)
                label = store.split("?")[0].replace(tmp, "<tmp>")
                srv_us = cpu / max(pairs, 1) * 1e6
                gen_us = gen_cpu / max(pairs, 1) * 1e6
                cores = os.cpu_count() or 1
                # What the cores could do were they this run's alone: the service's
                # workers take one core each at most; service and generators share all.
                bound = min(workers * 1e6 / max(srv_us, 1e-9),
                            cores * 1e6 / max(srv_us + gen_us, 1e-9))
                print(f"{workers:>7} {label[:24]:<24} {rate:>8,.0f} {q[49] * 1000:>7.2f} "
                      f"{q[98] * 1000:>7.2f} {srv_us:>18,.0f} {gen_us:>21,.0f} "
                      f"{gen_us / max(srv_us + gen_us, 1e-9):>15.0%} {bound:>17,.0f}",
                      flush=True)
            finally:
                proc.terminate()
                proc.wait(20)


def _server_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the serve process and its worker processes: on a
    shared machine the service's own cost per pair, whatever share of the cores it got."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _spent(httpx: object, url: str) -> int:
    res = httpx.get(f"{url}/v1/balances", params={"tenant": "bench"},  # type: ignore[attr-defined]
                    headers={"X-Cycles-API-Key": KEY})
    (tenant,) = [b for b in res.json()["balances"] if b["scope"] == "tenant:bench"]
    return int(tenant["spent"]["amount"])


if __name__ == "__main__":
    main()
