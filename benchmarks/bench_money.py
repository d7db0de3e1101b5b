"""Micro-benchmark of the money hot path: parse_amount and convert (ns per call).

Run from the repository root: ``python benchmarks/bench_money.py``. Not a test; it
prints one line per case with the median of several timed batches.
"""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable
from decimal import Decimal

from policyengine.money import CallableRates, Money, StaticRates, convert, fits, parse_amount

NOW = 1_750_000_000.0


def bench(label: str, fn: Callable[[], object], number: int = 200_000, repeat: int = 7) -> float:
    """Print and return the median ns per call over ``repeat`` batches of ``number`` calls."""
    fn()  # warm up (and fail fast if the case raises)
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    ns = statistics.median(runs) / number * 1e9
    print(f"{label:<48} {ns:8.0f} ns/op")
    return ns


def main() -> None:
    table = StaticRates("EUR", {"USD": "0.92", "GBP": "1.17", "JPY": "0.0061"})
    stale_checked = StaticRates("EUR", {"USD": "0.92"}, as_of=NOW, max_age=86_400)
    callable_rates = CallableRates(lambda a, b, now: Decimal("0.92"))
    usd = Money.parse("280", "USD")
    usd_cents = Money.parse("280.37", "USD")
    eur_cap = Money.parse("500", "EUR")
    dec = Decimal("12.50")

    print("policyengine money benchmarks (median ns per call)")
    bench('parse_amount("280", "USD")', lambda: parse_amount("280", "USD"))
    bench('parse_amount("12.50", "EUR")', lambda: parse_amount("12.50", "EUR"))
    bench(
        'parse_amount("10.001", "USD", round)',
        lambda: parse_amount("10.001", "USD", excess_decimals="round"),
    )
    bench("parse_amount(280, 'USD')  [int]", lambda: parse_amount(280, "USD"))
    bench("parse_amount(Decimal('12.50'), 'USD')", lambda: parse_amount(dec, "USD"))
    bench('Money.parse("280", "USD")', lambda: Money.parse("280", "USD"))
    bench("convert USD->EUR up (direct rate)", lambda: convert(usd, "EUR", table))
    bench(
        "convert USD->EUR up, max_age checked", lambda: convert(usd, "EUR", stale_checked, now=NOW)
    )
    bench("convert USD->GBP up (cross rate)", lambda: convert(usd_cents, "GBP", table))
    bench(
        "convert EUR->JPY down (cross rate)",
        lambda: convert(eur_cap, "JPY", table, rounding="down"),
    )
    bench("convert USD->EUR via CallableRates", lambda: convert(usd, "EUR", callable_rates))
    bench("convert EUR->EUR (same currency)", lambda: convert(eur_cap, "EUR", table))
    bench("fits(USD spend, EUR cap)", lambda: fits(usd, eur_cap, table))


if __name__ == "__main__":
    main()
