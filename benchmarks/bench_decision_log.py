"""Benchmark of the decision log (docs/decision-log.md).

Run from a checkout::

    python benchmarks/bench_decision_log.py           # all three figures
    python benchmarks/bench_decision_log.py --quick   # a fast smoke run

Not a test. It prints:

1. **added cost of a log to an in-process authorize** (goal: <= 2 µs at p50, enqueue
   only): p50 of batches of 100 ``authorize`` calls on the same engine policy with and
   without a log, interleaved; for "enqueue only" the log's sink is held so its writer
   thread sleeps (the queue is large enough never to fill), and a second figure has the
   writer running against a file, so its work competes for the interpreter;
2. **sustained records per second to a file sink** (goal: >= 100,000/s): decisions
   offered as fast as one thread can, from the first offer until the last record is
   flushed to the file, records of the shape ``authorize`` writes (context, rules,
   obligations, masking pass), after a warm-up of a tenth as many records; also per
   CPU-second of the process, which a loaded machine distorts less;
3. **ten times the sink's capacity** (goal: zero unaccounted records): a sink that takes
   at most C records/s gets decisions offered at 10 x C, under each overflow policy; after
   close, every decision offered is in the sink or the spill file, or counted as dropped
   or as an unrecorded denial.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import policyengine as pe
from policyengine.audit import DecisionLog, JsonlFileSink

POLICY = """
currency EUR
role payer: payments:*
agent "bot": payer
limit cap: payments:* amount <= 500 EUR
forbid blocked: payments:* when context.country in ["KP", "IR"]
log redact $.context.card partial 4
"""
CONTEXT = {"amount": "20", "currency": "EUR", "country": "FR", "card": "4111111111111111"}


class HeldSink:
    """Takes nothing until released: keeps the writer thread asleep."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def write(self, lines: Sequence[bytes]) -> None:
        self.release.wait()

    def close(self) -> None:
        pass


class ThrottledSink:
    """Takes at most ``rate`` records per second; counts the decision records it took."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.lines: list[bytes] = []

    def write(self, lines: Sequence[bytes]) -> None:
        time.sleep(len(lines) / self.rate)
        self.lines.extend(lines)

    def close(self) -> None:
        pass


def p50_per_call(engine: pe.Engine, samples: int) -> list[float]:
    out = []
    authorize = engine.authorize
    for _ in range(samples):
        t = time.perf_counter_ns()
        for _ in range(100):
            authorize("bot", "payments:pay", CONTEXT)
        out.append((time.perf_counter_ns() - t) / 100)
    return out


def added_cost(quick: bool, tmp: Path) -> None:
    plain = pe.Engine.from_source(POLICY)
    held = HeldSink()
    enqueue_only = pe.Engine.from_source(POLICY, decision_log=DecisionLog(
        held, capacity=10_000_000, batch_size=1024))
    with_writer = pe.Engine.from_source(POLICY, decision_log=DecisionLog(
        JsonlFileSink(tmp / "cost.jsonl", max_bytes=2**40), capacity=10_000_000))
    rounds = 20 if quick else 100
    base: list[float] = []
    enq: list[float] = []
    full: list[float] = []
    for engine in (plain, enqueue_only, with_writer):  # warm up
        p50_per_call(engine, 5)
    for _ in range(rounds):
        base += p50_per_call(plain, 5)
        enq += p50_per_call(enqueue_only, 5)
        full += p50_per_call(with_writer, 5)
    b, e, f = (statistics.median(x) / 1000 for x in (base, enq, full))
    print("1. added cost per authorize (p50 of 100-call batches, µs per call)")
    print(f"   authorize without a log           {b:7.2f} µs")
    print(f"   with a log, enqueue only          {e:7.2f} µs   added {e - b:+.2f} µs "
          "(goal <= 2 µs)")
    print(f"   with a log writing to a file      {f:7.2f} µs   added {f - b:+.2f} µs "
          "(the writer thread's work included)")
    held.release.set()
    for engine in (enqueue_only, with_writer):
        engine.close(timeout=120)


def sustained(quick: bool, tmp: Path) -> None:
    n = 50_000 if quick else 300_000
    engine = pe.Engine.from_source(POLICY)
    decision = engine.authorize("bot", "payments:pay", CONTEXT)
    path = tmp / "sustained.jsonl"
    # The default queue (65,536 records, block): the offering thread waits when it is
    # ahead, as a service would; a queue of all n records makes the garbage collector
    # walk them over and over and measures that instead.
    log = DecisionLog(JsonlFileSink(path, max_bytes=2**40), batch_size=4096)
    view = pe.audit.LogView(engine.revision, engine.policy.log_redactions)
    offer = log.decision
    # Sustained means the steady state: a first tenth warms the writer, the file and the
    # allocator up and is flushed before the clock starts.
    for _ in range(n // 10):
        inp = {"principal": "bot", "permission": "payments:pay", "context": dict(CONTEXT)}
        offer("authorize", decision, inp, None, view, time.perf_counter_ns())
    log.flush()
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(n):
        inp = {"principal": "bot", "permission": "payments:pay", "context": dict(CONTEXT)}
        offer("authorize", decision, inp, None, view, time.perf_counter_ns())
    offered = time.perf_counter() - start
    log.flush()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    log.close()
    with open(path, "rb") as f:
        lines = sum(1 for _ in f)
    size = path.stat().st_size
    print("2. sustained records per second to a JSON Lines file (after a warm-up tenth)")
    print(f"   {n:,} records offered in {offered:.2f} s, all on disk after {elapsed:.2f} s: "
          f"{n / elapsed:,.0f} records/s (goal >= 100,000/s); {size / lines:.0f} bytes a "
          f"record, {lines:,} lines with checkpoints")
    print(f"   CPU time of the whole process (offering thread, writer, shipper): {cpu:.2f} s, "
          f"{n / cpu:,.0f} records per CPU-second (what one idle core sustains), "
          f"{cpu / n * 1e6:.1f} µs a record")


def overload(quick: bool, tmp: Path) -> None:
    capacity = 5_000.0                      # records per second the sink takes
    offered_rate = capacity * 10
    seconds = 0.2 if quick else 0.5
    print(f"3. ten times the sink's capacity: sink {capacity:,.0f} records/s, "
          f"{offered_rate:,.0f} decisions/s offered for {seconds} s")
    for policy in ("block", "spill", "deny", "drop"):
        sink = ThrottledSink(capacity)
        spill = tmp / f"{policy}.spill.jsonl"
        log = DecisionLog(sink, overflow=policy, capacity=1_000, batch_size=256,  # type: ignore[arg-type]
                          spill_path=spill, stall_after=0.05)
        logged = pe.Engine.from_source(POLICY, decision_log=log)
        offered = 0
        results: dict[str, str] = {}
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            due = int((time.perf_counter() - start) * offered_rate)
            while offered < due:
                d = logged.authorize("bot", "payments:pay", {**CONTEXT, "n": offered})
                results[d.decision_id] = d.code
                offered += 1
        wall = time.perf_counter() - start
        log.close(timeout=600)
        stats = log.stats()
        kept = list(sink.lines)
        if spill.exists():
            kept += spill.read_bytes().splitlines()
        recorded = {r["decision_id"] for r in map(json.loads, kept)
                    if r["kind"] == "authorize"}
        missing = set(results) - recorded
        unaccounted = len(missing) - stats["dropped"] - stats["unrecorded_denials"]
        denied = sum(code == "decision_log_unavailable" for code in results.values())
        print(f"   {policy:5}  offered {offered:6,} in {wall:5.2f} s  recorded "
              f"{len(recorded & set(results)):6,}  dropped {stats['dropped']:6,}  denied "
              f"{denied:6,} (unrecorded {stats['unrecorded_denials']:,})  spilled "
              f"{stats['spilled']:6,}  unaccounted {unaccounted}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        # Each section starts from a collected heap: what one leaves behind (section 1's
        # large queues) is not the next one's cost.
        for section in (added_cost, sustained, overload):
            gc.collect()
            section(args.quick, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
