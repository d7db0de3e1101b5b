"""The decision service under load, on loopback: what ``policyengine serve`` sustains.

Starts ``policyengine serve benchmarks/service_policy`` (a subprocess, access log off,
file watching off) with 1 and then 2 workers, gets an agent token, and drives it with
``_loadgen`` (closed loop, keep-alive connections; one or more generator processes):

* single ``POST /v1/authorize`` (an allowed decision with obligations, money read
  exactly): requests/s = decisions/s, p50 and p99 per request;
* ``POST /access/v1/evaluations`` (AuthZEN batch, 100 evaluations a request):
  decisions/s = requests/s x 100.

Every run checks the answers are the expected ones before it counts them.

    python benchmarks/bench_service.py                 # 5 s per row
    python benchmarks/bench_service.py --quick         # 2 s per row
    python benchmarks/bench_service.py --generators 2  # two load generator processes
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _loadgen  # noqa: E402

POLICY = """namespace bench
currency EUR
rate USD 0.92
role travel: flights:*, payments:refund
agent "travel-agent": travel
forbid sanctioned: * when has(context.country) and context.country in ["KP", "IR"]
limit refund-cap: payments:refund amount <= 500 EUR
approval refund-review: payments:refund over 300 EUR
permit weekday: flights:book for role travel when context.weekday < 5
"""
AUTHORIZE = (b'{"permission":"payments:refund","context":{"amount":280.10,'
             b'"currency":"USD","country":"FR"}}')
BATCH_SIZE = 100


def _batch_body() -> bytes:
    items = [{"resource": {"type": "flights", "id": f"f{i}"},
              "context": {"country": "KP" if i % 7 == 6 else "FR"}} for i in range(BATCH_SIZE)]
    return json.dumps({"subject": {"type": "agent", "id": "travel-agent"},
                       "action": {"name": "book"}, "evaluations": items}).encode()


def _run_generator(args: tuple[int, list[bytes], int, float, float],
                   ) -> _loadgen.LoadResult:
    port, requests, connections, seconds, warmup = args
    return _loadgen.run("127.0.0.1", port, requests, connections=connections,
                        seconds=seconds, warmup=warmup)


def _drive(port: int, requests: list[bytes], generators: int, connections: int,
           seconds: float) -> tuple[float, float, float, dict[int, int], bytes]:
    jobs = [(port, requests, connections, seconds, 0.5)] * generators
    if generators == 1:
        results = [_run_generator(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(generators) as pool:
            results = pool.map(_run_generator, jobs)
    rate = sum(r.per_second for r in results)
    p50 = max(r.p50_ms for r in results)
    p99 = max(r.p99_ms for r in results)
    statuses: dict[int, int] = {}
    for r in results:
        for k, v in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
    return rate, p50, p99, statuses, results[0].sample_body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--generators", type=int, default=1)
    ap.add_argument("--connections", type=int, default=32,
                    help="connections per generator for single decisions")
    ap.add_argument("--batch-connections", type=int, default=4)
    args = ap.parse_args()
    seconds = 2.0 if args.quick else 5.0
    import httpx

    from policyengine.server import hash_secret

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench.policy").write_text(POLICY)
        creds = Path(tmp) / "credentials.json"
        creds.write_text(json.dumps({"agents": [{
            "clientId": "bench", "secretHash": hash_secret("bench-secret"),
            "agent": "travel-agent", "permissions": ["flights:*"]}]}))
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average "
              f"{os.getloadavg()[0]:.1f}, {args.generators} generator process(es) x "
              f"{args.connections} connections ({args.batch_connections} for batches), "
              f"{seconds:.0f} s a row")
        print(f"{'workers':>7} {'wire':<30} {'decisions/s':>12} {'req/s':>8} {'p50 ms':>7} "
              f"{'p99 ms':>7}  status")
        for workers in (int(w) for w in args.workers.split(",")):
            port = _loadgen.free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "policyengine", "serve", tmp, "--port", str(port),
                 "--workers", str(workers), "--credentials", str(creds), "--no-access-log",
                 "--watch-interval", "0", "--log-level", "warning"],
                stdout=subprocess.DEVNULL)
            try:
                _loadgen.wait_for_port("127.0.0.1", port)
                time.sleep(0.5)
                url = f"http://127.0.0.1:{port}"
                token = httpx.post(f"{url}/v1/oauth/token", data={
                    "grant_type": "client_credentials", "client_id": "bench",
                    "client_secret": "bench-secret"}).json()["access_token"]
                auth = [("authorization", f"Bearer {token}")]
                single = _loadgen.build_request("POST", "/v1/authorize", AUTHORIZE, auth)
                batch = _loadgen.build_request("POST", "/access/v1/evaluations",
                                               _batch_body())
                rows = [("/v1/authorize", single, 1, args.connections),
                        (f"/access/v1/evaluations x{BATCH_SIZE}", batch, BATCH_SIZE,
                         args.batch_connections)]
                for wire, request, per, connections in rows:
                    rate, p50, p99, statuses, sample = _drive(
                        port, [request], args.generators, connections, seconds)
                    answer = json.loads(sample)
                    if per == 1:
                        ok = answer["allowed"] is True and answer["obligations"][
                            "maxAmount"] == 500
                    else:
                        ok = [e["decision"] for e in answer["evaluations"]] == [
                            i % 7 != 6 for i in range(BATCH_SIZE)]
                    if not ok or set(statuses) != {200}:
                        raise SystemExit(f"unexpected answer from {wire}: {statuses} "
                                         f"{sample[:200]!r}")
                    print(f"{workers:>7} {wire:<30} {rate * per:>12,.0f} {rate:>8,.0f} "
                          f"{p50:>7.2f} {p99:>7.2f}  {statuses}", flush=True)
            finally:
                proc.terminate()
                proc.wait(20)


if __name__ == "__main__":
    main()
