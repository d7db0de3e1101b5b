"""What a declared context schema costs ``authorize``: the same policy and requests with
and without a ``schema`` for the permission, timed round-robin in one process.

    python benchmarks/bench_context_schema.py
    python benchmarks/bench_context_schema.py --quick

Not a test. ``undeclared``: no schema (the plan's one ``schema is None`` test);
``declared``: a schema of five fields (an enum, an int, a decimal, a money amount and a
string) checked on every request; ``declared, nested``: plus an optional list of
strings and a nested record. The difference between the first two is the price of
run-time validation; see docs/language.md, "Context schemas".
"""

from __future__ import annotations

from decimal import Decimal

from _common import call, harness_overhead_us, load_average, measure, parser, settings

from policyengine import Engine

RULES = """namespace pay
currency EUR
role r: pay:*
agent "bot": r
forbid sanctioned: pay:* when context.country in ["KP", "IR"]
limit cap: pay:refund amount <= 500 EUR
permit small: pay:refund when context.count < 10
"""
SCHEMA = """schema pay:refund {
  country: enum("FR", "DE", "ES", "KP", "IR")
  count: int
  risk: decimal
  amount: money
  currency: string
}
"""
NESTED = SCHEMA[:-2] + """  tags?: list[string]
  customer?: { id: string, tier?: enum("gold", "silver") }
}
"""
CONTEXT = {"country": "FR", "count": 3, "risk": Decimal("0.2"), "amount": "120.00",
           "currency": "EUR"}
FULL = {**CONTEXT, "tags": ["a", "b", "c"], "customer": {"id": "c1", "tier": "gold"}}


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    cfg = settings(args.quick)
    scenarios = {
        "undeclared": (Engine.from_source(RULES), CONTEXT),
        "declared (5 fields)": (Engine.from_source(RULES + SCHEMA), CONTEXT),
        "declared, nested (7 fields, list, record)": (Engine.from_source(RULES + NESTED),
                                                      FULL),
    }
    for engine, context in scenarios.values():
        assert engine.authorize("bot", "pay:refund", context).allowed
    print(f"load: {load_average()}; harness overhead {harness_overhead_us(cfg):.2f} us")
    results = {}
    for _ in range(3):  # rounds, so that drift in the machine's load hits every scenario
        for name, (engine, context) in scenarios.items():
            t = measure([call(engine.authorize, "bot", "pay:refund", context)], cfg)
            results.setdefault(name, []).append(t.p50_us)
    for name, values in results.items():
        print(f"{name:<44} p50 {min(values):7.2f} us (best of 3 rounds)")


if __name__ == "__main__":
    main()
