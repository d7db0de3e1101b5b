"""Micro-benchmark of redaction and extraction (microseconds per call, p50 and mean).

Run ``python benchmarks/bench_redaction.py`` from a checkout (or with the package
installed). Raw jsonpath-ng find+update is printed for reference.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jsonpath_ng.ext import parse as jp_parse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from policyengine.tools import JsonPath, RedactionRule, redact

BODY: dict[str, Any] = {
    "amount": 12500,
    "currency": "EUR",
    "charge": "ch_3Nx",
    "card": {"number": "4111111111111111", "cvc": "123", "exp": "12/29"},
    "customer": {"email": "ana@example.com", "name": "Ana", "address": {"city": "Porto"}},
    "metadata": {"order": "o-1", "note": "refund"},
    "items": [{"sku": f"s{i}", "card": f"41111111111111{i:02d}", "qty": i} for i in range(5)],
}

KEY = b"0123456789abcdef0123456789abcdef"


def measure(fn: Callable[[], Any], n: int = 20000, repeat: int = 7) -> tuple[float, float]:
    """(p50, mean) in microseconds of ``fn()`` over ``repeat`` batches of ``n`` calls."""
    for _ in range(min(n, 1000)):
        fn()
    per_call = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter_ns() - t0) / n / 1000)
    return statistics.median(per_call), statistics.fmean(per_call)


def main() -> None:
    one = [RedactionRule("$.card.number", "mask")]
    three = [
        RedactionRule("$.card.number", "partial", keep=4),
        RedactionRule("$.card.cvc", "remove"),
        RedactionRule("$.customer.email", "hash"),
    ]
    wildcard = [RedactionRule("$.items[*].card", "mask")]
    descent = [RedactionRule("$..email", "hash")]
    sliced = [RedactionRule("$.items[0:5].card", "mask")]
    amount = JsonPath.compile("$.amount")
    currency = JsonPath.compile("$.currency")
    raw_expr = jp_parse("$.card.number")

    def raw_jsonpath_ng() -> Any:
        doc = copy.deepcopy(BODY)
        raw_expr.find(doc)
        return raw_expr.update(doc, "***REDACTED***")

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("redact 1 simple path (mask)", lambda: redact(BODY, one)),
        ("redact 3 simple paths (partial, remove, hash)",
         lambda: redact(BODY, three, hmac_key=KEY)),
        ("redact 1 wildcard $.items[*].card", lambda: redact(BODY, wildcard)),
        ("redact 1 recursive descent $..email", lambda: redact(BODY, descent, hmac_key=KEY)),
        ("redact 1 slice via jsonpath-ng $.items[0:5].card",
         lambda: redact(BODY, sliced)),
        ("extract first($.amount)", lambda: amount.first(BODY)),
        ("extract amount + currency", lambda: (amount.first(BODY), currency.first(BODY))),
        ("reference: deepcopy + jsonpath-ng find+update", raw_jsonpath_ng),
    ]
    print(f"{'case':<50} {'p50 us':>8} {'mean us':>8}")
    for name, fn in cases:
        n = 20000 if name.startswith(("redact 1 simple", "redact 3", "extract")) else 2000
        p50, mean = measure(fn, n=n)
        print(f"{name:<50} {p50:8.2f} {mean:8.2f}")


if __name__ == "__main__":
    main()
