"""Benchmark of ``Engine.tool_authorize`` (outbound tool calls: egress, routes, extraction,
redaction).

Run from a checkout::

    python benchmarks/bench_tool_authorize.py           # full run
    python benchmarks/bench_tool_authorize.py --quick   # fast smoke run

Not a test: it prints p50 / p99 microseconds per decision and decisions per second for an
HTTP call with amount extraction (``amount = $.amount minor, currency = $.currency``, a USD
amount checked against EUR limit/approval rules) and three redactions (``mask``,
``partial 4``, ``hash``), an MCP call, a call denied by ``egress`` and one denied by a
``deny`` route, plus ``authorize`` of the same permission for reference. Each case's
outcome (and the redacted body) is checked before timing. The method is in
``_common.py`` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from _common import (
    Timing,
    call,
    fmt_rate,
    fmt_us,
    harness_overhead_us,
    machine_line,
    measure,
    parser,
    print_table,
    settings,
    timed_build,
    warn,
)

import policyengine as pe

TARGET_HTTP_P50_US = 30.0
HMAC_KEY = b"bench-hmac-key-0123456789abcdef!"  # 32 bytes

POLICY = """\
namespace shop
currency EUR
rate USD 0.92

role payments: payments:refund, support:*
agent "refund-agent": payments

forbid sanctioned: * when context.country in ["KP", "IR", "SY"]
limit refund-cap: payments:refund amount <= 500 EUR
approval refund-review: payments:refund over 300 EUR

tool stripe: http "api.stripe.com" {
  POST "/v1/refunds" -> payments:refund { amount = $.amount minor, currency = $.currency }
  deny "/v1/accounts/**"
  redact $.card mask
  redact $.customer.phone partial 4
  redact $.customer.email hash
}
tool lookup: mcp "support.lookup_*" -> support:lookup

egress {
  allow "api.stripe.com"
  deny "evil.example.com"
}
"""

BODY: dict[str, Any] = {
    "amount": 12500,  # minor units: 125.00 USD = 115.00 EUR, under the approval threshold
    "currency": "USD",
    "charge": "ch_3NxBench",
    "reason": "requested_by_customer",
    "card": "4111111111111111",
    "customer": {
        "name": "Ana",
        "phone": "+351912345678",
        "email": "ana@example.com",
        "address": {"city": "Porto", "country": "PT"},
    },
    "metadata": {"order": "o-1", "note": "refund"},
}
CONTEXT = {"country": "FR"}


@dataclass(frozen=True)
class Case:
    label: str
    kwargs: dict[str, Any]
    status: str  # expected status
    outcome: str  # expected outcome


CASES: tuple[Case, ...] = (
    Case("http POST /v1/refunds (extract amount + 3 redactions)",
         {"transport": "http", "method": "POST", "host": "api.stripe.com",
          "path": "/v1/refunds", "body": BODY, "context": CONTEXT},
         "allowed", "policy_allow"),
    Case("mcp support.lookup_order",
         {"transport": "mcp", "tool_name": "support.lookup_order",
          "body": {"order": "o-1"}, "context": CONTEXT},
         "allowed", "policy_allow"),
    Case("http to a denied host (egress_deny)",
         {"transport": "http", "method": "POST", "host": "evil.example.com",
          "path": "/v1/refunds", "body": BODY, "context": CONTEXT},
         "denied", "egress_deny"),
    Case("http GET a denied route (route_deny)",
         {"transport": "http", "method": "GET", "host": "api.stripe.com",
          "path": "/v1/accounts/acct_1", "context": CONTEXT},
         "denied", "route_deny"),
)


def check(engine: Any) -> int:
    """Compare each case with its expected outcome (and the redacted body); count misses."""
    bad = 0
    for case in CASES:
        before = copy.deepcopy(case.kwargs.get("body"))
        d = engine.tool_authorize("refund-agent", **case.kwargs)
        if (d.status, d.outcome) != (case.status, case.outcome):
            warn(f"{case.label}: got {d.status}/{d.outcome}, expected "
                 f"{case.status}/{case.outcome} ({d.reason})")
            bad += 1
        if case.kwargs.get("body") != before:
            warn(f"{case.label}: tool_authorize mutated the caller's body")
            bad += 1
    d = engine.tool_authorize("refund-agent", **CASES[0].kwargs)
    body = d.body if isinstance(d.body, dict) else {}
    customer = body.get("customer", {})
    redacted = (
        body.get("card") != BODY["card"]
        and str(customer.get("phone", "")).endswith("5678")
        and customer.get("phone") != BODY["customer"]["phone"]
        and str(customer.get("email", "")).startswith("hmac-sha256:")
        and body.get("amount") == BODY["amount"]
    )
    if not redacted:
        warn(f"unexpected redacted body: {body!r}")
        bad += 1
    wire = d.to_wire()
    max_amount = (wire.get("obligations") or {}).get("maxAmount")
    if max_amount is None or Decimal(str(max_amount)) != 500:
        warn(f"expected the refund-cap obligation, got {wire.get('obligations')!r}")
        bad += 1
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    ap = parser(__doc__.splitlines()[0] if __doc__ else "")
    args = ap.parse_args(argv)
    cfg = settings(args.quick)
    print("tool_authorize benchmark:", machine_line())
    print(f"mode: {'quick' if cfg.quick else 'full'}; {cfg.budget_s:g} s per row after "
          f"{cfg.warmup_s:g} s warm-up; batches of up to 100 calls")
    overhead = harness_overhead_us(cfg)
    engine, first_ms = timed_build(lambda: pe.Engine.from_source(POLICY, hmac_key=HMAC_KEY))
    engine, compile_ms = timed_build(lambda: pe.Engine.from_source(POLICY, hmac_key=HMAC_KEY))
    mismatches = check(engine)

    results: list[tuple[str, Timing]] = []
    for case in CASES:
        print(f"  ... {case.label}", file=sys.stderr, flush=True)
        fn = call(engine.tool_authorize, "refund-agent", **case.kwargs)
        results.append((case.label, measure([fn], cfg)))
    ref_ctx = {"country": "FR", "amount": "125.00", "currency": "USD"}
    results.append(("reference: authorize payments:refund (125 USD)",
                    measure([call(engine.authorize, "refund-agent", "payments:refund",
                                  ref_ctx)], cfg)))

    print()
    rows = [[label, fmt_us(t.p50_us), fmt_us(t.p99_us), fmt_rate(t.per_s),
             f"{t.samples} x {t.batch}"] for label, t in results]
    print_table(["case", "p50 us", "p99 us", "decisions/s", "samples x batch"], rows, left=1)
    print(f"\ncompile (Engine.from_source, grammar already loaded): {compile_ms:.1f} ms; "
          f"first build in the process: {first_ms:.0f} ms")
    print(f"harness overhead (no-op through the same loop): {overhead * 1000:.0f} ns/call, "
          "included above")
    print("load average after the run:", machine_line().rsplit("load average ", 1)[-1])
    p50 = results[0][1].p50_us
    print(f"\ntarget: http with extraction + 3 redactions p50 <= {TARGET_HTTP_P50_US:g} us: "
          f"{p50:.1f} us {'met' if p50 <= TARGET_HTTP_P50_US else 'MISSED'}")
    if mismatches:
        warn(f"{mismatches} unexpected outcomes (see above)")
    else:
        print("every case gave its expected outcome (and the expected redacted body)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
