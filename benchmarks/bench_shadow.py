"""What shadow statements cost ``authorize``, and how fast ``replay`` re-decides a log:
the same policy and request with no shadow statement, with shadow rules that apply, and
with a shadow budget, timed round-robin in one process; then a decision log replayed.

    python benchmarks/bench_shadow.py
    python benchmarks/bench_shadow.py --quick

Not a test. ``no shadow``: the plan's one ``shadows`` test; ``3 shadow rules``: a
forbid, a limit and an approval over, all applying (three outcomes on the decision);
``shadow budget``: one read-only admission against the shadow budget's bucket.
``python benchmarks/compare_commits.py`` measures the policy without shadow statements
against an older commit. See docs/language.md, "Shadow statements", and
docs/decision-log.md, "Replay".
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from _common import call, harness_overhead_us, load_average, measure, parser, settings

from policyengine import Engine
from policyengine.audit import DecisionLog
from policyengine.replay import log_set, new_clock, replay

RULES = """namespace pay
currency EUR
role r: pay:*
agent "bot": r
forbid sanctioned: pay:* when context.country in ["KP", "IR"]
limit cap: pay:refund amount <= 500 EUR
"""
SHADOW_RULES = """forbid big: pay:refund when amount > 100 EUR mode warn
limit tight: pay:refund amount <= 50 EUR mode log
approval review: pay:refund over 80 EUR mode warn
"""
SHADOW_BUDGET = "budget trial: pay:* limit 1000 EUR per day mode log\n"
CONTEXT = {"country": "FR", "amount": "120.00", "currency": "EUR"}
RECORDS = 20_000


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    cfg = settings(args.quick)
    scenarios = {
        "no shadow": Engine.from_source(RULES),
        "3 shadow rules (all apply)": Engine.from_source(RULES + SHADOW_RULES),
        "shadow budget": Engine.from_source(RULES + SHADOW_BUDGET),
    }
    for engine in scenarios.values():
        assert engine.authorize("bot", "pay:refund", CONTEXT).allowed
    print(f"load: {load_average()}; harness overhead {harness_overhead_us(cfg):.2f} us")
    results: dict[str, list[float]] = {}
    for _ in range(3):  # rounds, so that drift in the machine's load hits every scenario
        for name, engine in scenarios.items():
            t = measure([call(engine.authorize, "bot", "pay:refund", CONTEXT)], cfg)
            results.setdefault(name, []).append(t.p50_us)
    for name, values in results.items():
        print(f"{name:<28} authorize p50 {min(values):7.2f} us (best of 3 rounds)")

    records = 2_000 if args.quick else RECORDS
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp) / "old.policy", Path(tmp) / "new.policy"
        old.write_text(RULES)
        new.write_text(RULES + "forbid big: pay:refund when amount > 100 EUR\n")
        log = Path(tmp) / "d.jsonl"
        engine = Engine.from_path(str(old), decision_log=DecisionLog(str(log)))
        for n in range(records):
            engine.authorize("bot", "pay:refund", {**CONTEXT, "amount": str(n % 200)})
        engine.close()
        clock = new_clock()
        replaying = Engine.from_path(str(new), clock=clock)
        t0 = time.process_time()
        report = replay(log_set(log), replaying, clock)
        spent = time.process_time() - t0
        assert report.replayed == records and report.changes
        print(f"replay: {records} records in {spent:.2f} s CPU, "
              f"{records / spent:,.0f} records/s ({len(report.changes)} changed)")


if __name__ == "__main__":
    main()
