"""The budget wires under load, on loopback: actguard reservations and agent-ledger event
batches through ``policyengine serve`` (one worker, access log off).

* ``POST /ag/api/v1/reserve``: every request a new run (distinct ``run_id``) holding
  $0.01 on a per-agent day budget: the policy decision, then an atomic reservation;
* ``POST /ledger/v1/events``: a batch of one tool event into one session (validated and
  kept; tool events are not priced);
* ``POST /ledger/v1/events``: one ``llm_call`` (gpt-4o-mini, 1,200 tokens in, 300 out):
  priced by the policy, asked of the policy, recorded on a cent and a microcent budget.

Every run checks the answers' status before it counts them.

    python benchmarks/bench_budget_wires.py            # 5 s per row
    python benchmarks/bench_budget_wires.py --quick    # 2 s per row
"""

from __future__ import annotations

import argparse
import json
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
currency USD
role llm: llm:*
agent "bench-agent": llm
price "openai" "gpt-4o-mini": input 0.15 USD, output 0.60 USD per 1M tokens
budget daily: llm:* limit 1000000 USD per day per agent
budget fine: llm:* limit 100000000000000 USD_MICROCENTS per day per agent
"""
KEY = "bench-api-key"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    seconds = 2.0 if args.quick else 5.0
    import httpx

    from policyengine.server import hash_secret

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "bench.policy").write_text(POLICY)
        creds = Path(tmp) / "credentials.json"
        creds.write_text(json.dumps({"apiKeys": [{
            "name": "bench", "keyHash": hash_secret(KEY), "agent": "bench-agent"}]}))
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average "
              f"{os.getloadavg()[0]:.1f}, 1 worker, {args.connections} connections, "
              f"{seconds:.0f} s a row")
        print(f"{'wire':<40} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}  status")
        port = _loadgen.free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "policyengine", "serve", tmp, "--port", str(port),
             "--credentials", str(creds), "--no-access-log", "--watch-interval", "0",
             "--log-level", "warning", "--prefix", "actguard=/ag",
             "--prefix", "agent-ledger=/ledger"], stdout=subprocess.DEVNULL)
        try:
            _loadgen.wait_for_port("127.0.0.1", port)
            time.sleep(0.5)
            url = f"http://127.0.0.1:{port}"
            session = httpx.post(f"{url}/ledger/v1/sessions", json={
                "agentName": "bench-agent"}, headers={"x-api-key": KEY}).json()["id"]
            reserves = [_loadgen.build_request(
                "POST", "/ag/api/v1/reserve",
                json.dumps({"run_id": f"run-{i}", "cost_limit": 10}).encode(),
                [("authorization", f"Bearer {KEY}")]) for i in range(200_000)]
            event = _loadgen.build_request("POST", "/ledger/v1/events", json.dumps({
                "sessionId": session, "events": [{"type": "tool_call", "stepIndex": 0,
                                                  "toolName": "search",
                                                  "toolInput": {"q": "LIS"}}]}).encode(),
                [("x-api-key", KEY)])
            llm = _loadgen.build_request("POST", "/ledger/v1/events", json.dumps({
                "sessionId": session, "events": [{
                    "type": "llm_call", "stepIndex": 1, "provider": "openai",
                    "model": "gpt-4o-mini", "prompt": "p", "response": "r",
                    "tokensIn": 1200, "tokensOut": 300, "latencyMs": 400}]}).encode(),
                [("x-api-key", KEY)])
            rows = [("actguard reserve (new run each)", reserves, {200}),
                    ("agent-ledger events (1 tool event)", [event], {200}),
                    ("agent-ledger events (1 priced LLM call)", [llm], {200})]
            for name, requests, expected in rows:
                r = _loadgen.run("127.0.0.1", port, requests, connections=args.connections,
                                 seconds=seconds, warmup=0.5)
                if set(r.statuses) != expected:
                    raise SystemExit(f"unexpected answers from {name}: {r.statuses} "
                                     f"{r.sample_body[:200]!r}")
                print(f"{name:<40} {r.per_second:>8,.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f}  "
                      f"{r.statuses}", flush=True)
        finally:
            proc.terminate()
            proc.wait(20)


if __name__ == "__main__":
    main()
